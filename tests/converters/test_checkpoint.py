"""Checkpoint intake: wrappers, prefixes, safetensors, layout detection, refusal of unsafe files."""

import os

import pytest
import torch
from safetensors.torch import save_file

from converters.checkpoint import build_model, detect_layout, load_checkpoint
from converters.googlenet import GoogLeNet, count_parameters
from converters.errors import CheckpointError


@pytest.fixture(scope="module")
def states():
    """Aux-ful state dicts of both layouts, 10 classes, seeded."""
    torch.manual_seed(0)
    return {layout: GoogLeNet(layout, num_classes=10).state_dict() for layout in ("paper", "torchvision")}


def _prefixed(sd, prefix):
    return {prefix + k: v for k, v in sd.items()}


WRAPPERS = {
    "raw": lambda sd: sd,
    "state_dict": lambda sd: {"state_dict": sd, "epoch": 9},
    "model": lambda sd: {"model": sd, "optimizer": {"state": {}}, "epoch": 3},
    "model_state_dict": lambda sd: {"model_state_dict": sd, "best_acc1": 0.7},
    "ema": lambda sd: {"ema": sd},
    "state_dict_ema": lambda sd: {"state_dict_ema": _prefixed(sd, "module.")},
    "module.": lambda sd: _prefixed(sd, "module."),
    "_orig_mod.": lambda sd: {"model": _prefixed(sd, "_orig_mod.")},
    "module._orig_mod.": lambda sd: _prefixed(sd, "module._orig_mod."),
}


@pytest.mark.parametrize("layout", ["paper", "torchvision"])
@pytest.mark.parametrize("wrapper", list(WRAPPERS))
def test_every_wrapper_and_prefix_loads(tmp_path, states, layout, wrapper):
    sd = states[layout]
    path = tmp_path / "ckpt.pth"
    torch.save(WRAPPERS[wrapper](sd), path)
    ckpt = load_checkpoint(path)
    assert ckpt.layout == layout and ckpt.num_classes == 10
    model = build_model(ckpt)
    torch.testing.assert_close(model.fc.weight, sd["fc.weight"], rtol=0, atol=0)


@pytest.mark.parametrize("layout", ["paper", "torchvision"])
def test_safetensors(tmp_path, states, layout):
    path = tmp_path / "ckpt.safetensors"
    save_file({k: v.contiguous() for k, v in states[layout].items()}, str(path))
    ckpt = load_checkpoint(path)
    assert ckpt.layout == layout
    build_model(ckpt)


def test_ema_weights_are_used_only_without_plain_weights(tmp_path, states):
    sd = states["paper"]
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in sd.items()}
    torch.save({"model": sd, "ema": ema}, tmp_path / "both.pth")
    assert torch.equal(load_checkpoint(tmp_path / "both.pth").state_dict["fc.bias"], sd["fc.bias"])


@pytest.mark.parametrize("layout", ["paper", "torchvision"])
def test_aux_strip_is_reported(tmp_path, states, layout):
    torch.save(states[layout], tmp_path / "ckpt.pth")
    ckpt = load_checkpoint(tmp_path / "ckpt.pth")
    assert not any(k.startswith(("aux1.", "aux2.")) for k in ckpt.state_dict)
    full = count_parameters(GoogLeNet(layout, num_classes=10))
    bare = count_parameters(GoogLeNet(layout, num_classes=10, aux_logits=False))
    assert ckpt.aux_params_stripped == full - bare
    assert ckpt.aux_keys_stripped == sum(k.startswith(("aux1.", "aux2.")) for k in states[layout])


def test_layout_detection(states):
    assert detect_layout(states["paper"]) == "paper"
    assert detect_layout(states["torchvision"]) == "torchvision"
    hybrid = dict(states["paper"])
    hybrid["conv1.bn.running_mean"] = torch.zeros(64)
    with pytest.raises(CheckpointError, match="pass --layout"):
        detect_layout(hybrid)


def test_layout_override_mismatch_names_keys(tmp_path, states):
    torch.save(states["paper"], tmp_path / "paper.pth")
    ckpt = load_checkpoint(tmp_path / "paper.pth", layout="torchvision")
    with pytest.raises(CheckpointError) as err:
        build_model(ckpt)
    message = str(err.value)
    assert "missing: conv1.bn.weight" in message and "unexpected: conv1.conv.bias" in message


def test_missing_key_is_named(tmp_path, states):
    sd = dict(states["paper"])
    del sd["inception4c.branch2.1.conv.weight"]
    torch.save(sd, tmp_path / "ckpt.pth")
    with pytest.raises(CheckpointError, match=r"missing: inception4c\.branch2\.1\.conv\.weight"):
        build_model(load_checkpoint(tmp_path / "ckpt.pth"))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    torch.save({"model": Payload()}, path)
    with pytest.raises(CheckpointError, match="refused.*none of it was run"):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "not a readable PyTorch checkpoint"),
        (b"this is not a checkpoint at all" * 10, "not a readable PyTorch checkpoint"),
    ],
)
def test_garbage_files(tmp_path, content, message):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_truncated_checkpoint(tmp_path, states):
    path = tmp_path / "ckpt.pth"
    torch.save(states["paper"], path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)


def test_not_a_googlenet(tmp_path):
    torch.save({"model": {"layer.weight": torch.zeros(3)}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not a GoogLeNet checkpoint"):
        load_checkpoint(tmp_path / "other.pth")


def test_nan_weights_are_refused(tmp_path, states):
    sd = dict(states["paper"])
    sd["fc.weight"] = torch.full_like(sd["fc.weight"], float("nan"))
    torch.save(sd, tmp_path / "nan.pth")
    with pytest.raises(CheckpointError, match="NaN"):
        build_model(load_checkpoint(tmp_path / "nan.pth"))


@pytest.mark.parametrize("saved, expected", [
    ({"classes": ["cat", "dog", "eel"]}, ("cat", "dog", "eel")),
    ({"class_to_idx": {"eel": 2, "cat": 0, "dog": 1}}, ("cat", "dog", "eel")),  # ImageFolder's, in index order
    ({"labels": torch.zeros(3)}, ()),  # a tensor of targets is not class names
    ({}, ()),
])
def test_class_names_saved_with_the_weights_are_found(tmp_path, saved, expected):
    torch.manual_seed(0)
    torch.save({"model": GoogLeNet("paper", num_classes=3).state_dict(), **saved}, tmp_path / "c.pth")
    assert load_checkpoint(tmp_path / "c.pth").classes == expected


def test_class_names_that_do_not_fit_fc_are_refused_by_export(tmp_path):
    from converters.errors import ExportError
    from converters.export import export

    torch.manual_seed(0)
    torch.save({"model": GoogLeNet("paper", num_classes=3).state_dict(), "classes": ["cat", "dog"]}, tmp_path / "c.pth")
    with pytest.raises(ExportError, match="its 'classes' names 2 classes but fc has 3; give the right names with --labels"):
        export(tmp_path / "c.pth", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
