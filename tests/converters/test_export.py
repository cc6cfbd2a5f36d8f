"""The export: aux-free graph, dynamic batch, metadata, report, parity gate, atomic failure."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import converters.export as export_mod
from converters.checkpoint import build_model, load_checkpoint
from converters.export import export, read_labels
from converters.googlenet import GoogLeNet, count_parameters
from converters.parity import check_parity, compare
from converters.errors import ExportError
from runtimes.errors import ParityError
from runtimes.spec import ModelSpec
from runtimes.tolerances import FP32
from tests.conftest import save_training_checkpoint
from tests.helpers import perturb_fc_bias

REPO = Path(__file__).resolve().parents[2]


def _conv(cin: int, cout: int, k: int) -> int:
    """Weights and biases of a biased k x k convolution."""
    return cin * cout * k * k + cout


# Written out from the paper (Szegedy et al. 2014, Table 1), not taken from the code under
# test: each inception module's input channels, #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj.
TABLE1_INCEPTIONS = [
    (192, 64, 96, 128, 16, 32, 32), (256, 128, 128, 192, 32, 96, 64), (480, 192, 96, 208, 16, 48, 64),
    (512, 160, 112, 224, 24, 64, 64), (512, 128, 128, 256, 24, 64, 64), (512, 112, 144, 288, 32, 64, 64),
    (528, 256, 160, 320, 32, 128, 128), (832, 256, 160, 320, 32, 128, 128), (832, 384, 192, 384, 48, 128, 128),
]
# conv1 7x7/2, conv2's 1x1 reduce and 3x3, six convolutions per inception module.
TABLE1_CONVS = 3 + 6 * len(TABLE1_INCEPTIONS)
TABLE1_PARAMS = (
    _conv(3, 64, 7) + _conv(64, 64, 1) + _conv(64, 192, 3)
    + sum(_conv(i, a, 1) + _conv(i, b, 1) + _conv(b, c, 3) + _conv(i, d, 1) + _conv(d, e, 5) + _conv(i, f, 1)
          for i, a, b, c, d, e, f in TABLE1_INCEPTIONS)
    + 1024 * 1000 + 1000  # the linear classifier
)
# Section 5's auxiliary classifiers on 4a (512 channels) and 4d (528): 5x5/3 average pool
# to 4x4, 1x1 conv with 128 filters, a 1024-unit fully connected layer, a 1000-way linear layer.
PAPER_AUX_PARAMS = sum(_conv(c, 128, 1) + 4 * 4 * 128 * 1024 + 1024 + 1024 * 1000 + 1000 for c in (512, 528))
# The 1x1 window-sum conv each LRN becomes (64 and 192 channels): a band weight and a bias.
LRN_CONSTANTS = 64 * 64 + 64 + 192 * 192 + 192


@pytest.fixture(scope="module")
def tv_export(tmp_path_factory):
    """A torchvision-layout training checkpoint with 7 classes, exported with defaults."""
    tmp = tmp_path_factory.mktemp("tv")
    ckpt = save_training_checkpoint(tmp / "tv.pth", "torchvision", num_classes=7, seed=1)
    return export(ckpt, tmp / "tv.onnx")


def _session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def paper_torch(paper_export):
    return _torch_model(paper_export)


def _torch_model(result):
    ckpt = load_checkpoint(result.checkpoint)
    return build_model(ckpt, transform_input=result.spec.transform_input)


def test_graph_has_one_output_and_no_aux(paper_export):
    model = onnx.load(str(paper_export.path))
    assert [o.name for o in model.graph.output] == ["logits"]
    assert [i.name for i in model.graph.input] == ["input"]
    names = [n.name for n in model.graph.node] + [i.name for i in model.graph.initializer]
    assert not any("aux" in name for name in names)
    ops = [n.op_type for n in model.graph.node]
    # Table 1's convolutions and classifier, plus the 1x1 window-sum Conv each LRN became;
    # the aux heads would add 2 Conv and 4 Gemm.
    assert ops.count("Conv") == TABLE1_CONVS + 2 and ops.count("Gemm") == 1 and ops.count("LRN") == 0
    params = sum(int(np.prod(i.dims)) for i in model.graph.initializer)
    lrn_constants = sum(int(np.prod(i.dims)) for i in model.graph.initializer if i.name.endswith(("LRN.band", "LRN.bias")))
    assert (params, lrn_constants) == (TABLE1_PARAMS + LRN_CONSTANTS, LRN_CONSTANTS)
    assert paper_export.report["parameters"] == {"torch": TABLE1_PARAMS, "onnx_initializers": TABLE1_PARAMS + LRN_CONSTANTS}


def test_torchvision_graph_parameters_equal_aux_free_model_after_bn_folding(tv_export):
    model = GoogLeNet("torchvision", num_classes=7, aux_logits=False)
    # Folding a BatchNorm into its conv turns 2 params per channel (weight, bias) into 1 (conv bias).
    bn_channels = sum(m.num_features for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert tv_export.report["parameters"]["onnx_initializers"] == count_parameters(model) - bn_channels


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_dynamic_batch_matches_pytorch(paper_export, paper_torch, batch):
    session = _session(paper_export.path)
    x = np.random.default_rng(batch).standard_normal((batch, 3, 224, 224), dtype=np.float32)
    with torch.inference_mode():
        ref = paper_torch(torch.from_numpy(x)).numpy()
    stats = compare(ref, session.run(None, {"input": x})[0], FP32)
    assert stats.passed, stats.summary()


def test_metadata_carries_preprocessing_and_provenance(paper_export):
    spec = ModelSpec.from_onnx(paper_export.path)
    assert spec == paper_export.spec
    assert spec.num_classes == 1000 and spec.labels[:2] == ("tench", "goldfish")
    assert (spec.resize_size, spec.crop_size, spec.channel_order) == (256, 224, "RGB")
    assert spec.mean == (0.485, 0.456, 0.406) and spec.std == (0.229, 0.224, 0.225)
    assert spec.layout == "paper" and spec.transform_input is False and spec.precision == "fp32"
    assert spec.checkpoint_name == "paper.pth" and spec.checkpoint_sha256 == load_checkpoint(paper_export.checkpoint).sha256
    props = {p.key: p.value for p in onnx.load(str(paper_export.path), load_external_data=False).metadata_props}
    provenance = json.loads(props["googlenet_deploy.provenance"])
    model = onnx.load(str(paper_export.path), load_external_data=False)
    assert provenance["opset"] == next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 17
    import onnxsim

    # What the modules themselves say (onnxsim's own string starts with "v"), not the package metadata the export reads.
    for module in (torch, onnx, onnxsim):
        assert provenance["versions"][module.__name__] == module.__version__.removeprefix("v"), module.__name__
    # No path of this machine anywhere in the model: not the checkpoint's, not the output's.
    for text in props.values():
        assert str(paper_export.checkpoint.parent) not in text and str(paper_export.path.parent) not in text


def test_report_beside_model(paper_export):
    report = json.loads(paper_export.report_path.read_text())
    assert paper_export.report_path.name == "paper.report.json"
    assert report["nodes"]["simplified"] <= report["nodes"]["exported"]
    # Each of the 2 LRNs becomes Mul, Conv, Sqrt, Sqrt, Mul, Div: 5 more nodes apiece.
    assert report["nodes"]["final"] == report["nodes"]["simplified"] + 10
    assert report["aux_stripped"]["parameters"] == PAPER_AUX_PARAMS
    assert [p["batch"] for p in report["parity"]] == [1, 4] and all(p["passed"] for p in report["parity"])
    # The stages run one after the other inside the total (each rounded to 1 ms).
    timings = dict(report["timings_s"])
    total = timings.pop("total_s")
    assert len(timings) >= 4 and min(timings.values()) >= 0 and sum(timings.values()) <= total + 0.001 * len(timings)
    assert "/" not in report["model"] and "/" not in report["checkpoint"]["name"]


def test_torchvision_defaults_bake_transform_input(tv_export):
    spec = tv_export.spec
    assert spec.layout == "torchvision" and spec.transform_input is True
    assert spec.labels == tuple(f"class_{i}" for i in range(7))
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224), dtype=np.float32)
    out = _session(tv_export.path).run(None, {"input": x})[0]
    with torch.inference_mode():
        with_transform = _torch_model(tv_export)(torch.from_numpy(x)).numpy()
    assert compare(with_transform, out, FP32).passed


def test_no_transform_input_flag(tmp_path, tv_export):
    ckpt = tv_export.checkpoint
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join("abcdefg") + "\n")
    result = export(ckpt, tmp_path / "plain.onnx", transform_input=False, labels=labels, simplify_graph=False)
    assert result.spec.transform_input is False and result.spec.labels == tuple("abcdefg")
    assert result.report["provenance"]["simplifier"] == "disabled"


def test_label_count_mismatch(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\n")
    with pytest.raises(ExportError, match="has 2 labels but the checkpoint has 7 classes"):
        read_labels(labels, 7)


def test_perturbed_graph_fails_parity_gate(paper_export, paper_torch):
    perturbed = perturb_fc_bias(onnx.load(str(paper_export.path)))
    with pytest.raises(ParityError, match="disagrees with PyTorch") as err:
        check_parity(paper_torch, perturbed.SerializeToString())
    assert all(not s.passed and s.max_abs > 0.04 for s in err.value.stats)


def test_failed_parity_writes_nothing(tmp_path, monkeypatch, paper_ckpt):
    monkeypatch.setattr(export_mod, "simplify", lambda model: (perturb_fc_bias(model), "perturbed"))
    out = tmp_path / "model.onnx"
    with pytest.raises(ParityError):
        export(paper_ckpt, out)
    assert list(tmp_path.iterdir()) == []


def test_simplifier_falls_back_to_onnxslim(monkeypatch, paper_export, paper_torch):
    import onnxsim

    def broken(model, *args, **kwargs):
        raise RuntimeError("simulated onnxsim bug")

    monkeypatch.setattr(onnxsim, "simplify", broken)
    raw = onnx.load(str(paper_export.path))
    model, tool = export_mod.simplify(raw)
    assert tool == "onnxslim"
    check_parity(paper_torch, model.SerializeToString(), batches=(2,))


def _run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "converters.export", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def _malicious(path: Path, marker: Path):
    path.write_bytes(
        b"\x80\x02cposix\nsystem\nq\x00X" + len(f"touch {marker}").to_bytes(4, "little")
        + f"touch {marker}".encode() + b"q\x01\x85q\x02Rq\x03."
    )


@pytest.mark.parametrize("kind", ["malicious", "corrupt", "truncated", "incompatible", "missing"])
def test_bad_checkpoints_fail_cleanly(tmp_path, paper_ckpt, kind):
    ckpt, out, marker = tmp_path / "bad.pth", tmp_path / "out" / "model.onnx", tmp_path / "ran"
    if kind == "malicious":
        _malicious(ckpt, marker)
    elif kind == "corrupt":
        ckpt.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 40)
    elif kind == "truncated":
        ckpt.write_bytes(paper_ckpt.read_bytes()[:1_000_000])
    elif kind == "incompatible":
        torch.save({"model": {"conv1.conv.weight": torch.zeros(64, 3, 7, 7), "conv1.conv.bias": torch.zeros(64)}}, ckpt)
    proc = _run_cli("--ckpt", str(ckpt), "--out", str(out))
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.parent.exists() or list(out.parent.iterdir()) == []
    assert not marker.exists()
    if kind == "malicious":
        assert "refused" in lines[0] and "posix.system" in lines[0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--opset", "99"], "opset 99 is not supported; use 10 to 20"),
        (["--out", "{tmp}"], "is a directory"),
        (["--layout", "resnet"], "unknown layout 'resnet'; known: paper, torchvision"),
    ],
)
def test_bad_options_fail_before_any_work(tmp_path, paper_ckpt, args, message):
    proc = _run_cli("--ckpt", str(paper_ckpt), *[a.format(tmp=tmp_path) for a in args])
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and message in proc.stderr, proc.stderr


def test_cli_exports(tmp_path, paper_ckpt):
    out = tmp_path / "cli.onnx"
    proc = _run_cli("--ckpt", str(paper_ckpt), "--out", str(out), "--no-simplify")
    assert proc.returncode == 0, proc.stderr
    assert out.is_file() and (tmp_path / "cli.report.json").is_file()
    assert "parity max |d|" in proc.stdout


def test_same_checkpoint_from_another_folder_exports_identical_bytes(tmp_path, paper_export):
    """Nothing of where the checkpoint lives, where the model goes, or who runs the
    export gets into the model or its reference answers."""
    (tmp_path / "elsewhere").mkdir()
    shutil.copyfile(paper_export.checkpoint, tmp_path / "elsewhere" / paper_export.checkpoint.name)
    proc = subprocess.run(
        [sys.executable, "-m", "converters.export", "--ckpt", f"elsewhere/{paper_export.checkpoint.name}", "--out", "out/m.onnx"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO), "USER": "someone"},
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "m.onnx").read_bytes() == paper_export.path.read_bytes()
    assert (tmp_path / "out" / "m.reference.npz").read_bytes() == paper_export.reference_path.read_bytes()


def test_torch_reference_finds_the_checkpoint_beside_the_model_by_name(tmp_path, paper_export, paper_ckpt):
    from runtimes.adapters import create_runner
    from runtimes.errors import ProviderError

    shutil.copyfile(paper_export.path, tmp_path / "m.onnx")
    with pytest.raises(ProviderError, match=r"it records paper\.pth \(sha256 [0-9a-f]{12}\.\.\.\), and no such file is beside"):
        create_runner("torch", tmp_path / "m.onnx").load()
    shutil.copyfile(paper_ckpt, tmp_path / "paper.pth")
    x = np.zeros((1, 3, 224, 224), np.float32)
    with create_runner("torch", tmp_path / "m.onnx") as runner:
        assert runner.infer(x).shape == (1, 1000)
    with open(tmp_path / "paper.pth", "ab") as fh:  # same name, other bytes: not the source
        fh.write(b"\0")
    with pytest.raises(ProviderError, match="pass the checkpoint it was exported from"):
        create_runner("torch", tmp_path / "m.onnx").load()


def test_verify_images_are_the_users_own_and_labels_come_from_the_checkpoint(tmp_path, demo_ckpt):
    """No --labels: the demo checkpoint's own "classes" list names the classes (it was class_0..8)."""
    from runtimes.reference import Reference
    from samples.generate import CLASSES, IMAGES_DIR

    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    samples = sorted(IMAGES_DIR.glob("*.jpg"))
    shutil.copyfile(samples[0], mine / "b.jpg")
    shutil.copyfile(samples[-1], mine / "sub" / "a.jpg")
    result = export(demo_ckpt, tmp_path / "m.onnx", verify_images=mine)
    assert result.spec.labels == CLASSES and result.report["labels_from"] == "the checkpoint's 'classes'"
    ref = Reference.load(result.reference_path)
    assert ref.image_names == ("b.jpg", "sub/a.jpg") and ref.images == (samples[0].read_bytes(), samples[-1].read_bytes())
    assert [result.spec.labels[i] for i in ref.image_logits.argmax(axis=1)] == ["blue_checker", "red_vstripes"]


def test_max_pixels_guards_the_verify_images(tmp_path, paper_ckpt):
    """The limit's message names --max-pixels: export takes it. The demo samples are 51,850 to 200,304 pixels."""
    args = ("--ckpt", str(paper_ckpt), "--out", str(tmp_path / "out" / "m.onnx"), "--max-pixels", "40000")
    proc = _run_cli(*args)
    assert proc.returncode == 2 and "over the 40,000-pixel limit" in proc.stderr and "--max-pixels" in proc.stderr
    assert proc.stderr.count("\n") == 1 and not (tmp_path / "out").exists()


def test_a_bad_verify_image_fails_before_any_work(tmp_path, paper_ckpt):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    proc = _run_cli("--ckpt", str(paper_ckpt), "--out", str(tmp_path / "out" / "m.onnx"), "--verify-images", str(tmp_path / "imgs"))
    assert proc.returncode == 2 and proc.stderr.startswith("error: --verify-images: broken.jpg: "), proc.stderr
    assert proc.stderr.count("\n") == 1 and not (tmp_path / "out").exists()
