"""runtimes.diverge names the layer where a candidate leaves the reference: injected faults in
fp32 copies (early, middle and late Convs; every runtime; both modes), a broken int8 scale,
error spread over every layer, honest candidates, and a reference that fails its anchor."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from runtimes.diagnosis import diagnose
from runtimes.locate import BUDGETS
from runtimes.reference import Reference
from tests.helpers import provider_param

REPO = Path(__file__).resolve().parents[2]
CONVS = (2, 30, 57)  # the third Conv (conv3), one in inception4c, the last but one (inception5b)


@pytest.fixture(scope="module")
def demo(demo_export, tmp_path_factory) -> tuple[Path, Reference]:
    folder = tmp_path_factory.mktemp("diverge")
    model = folder / "googlenet.onnx"
    shutil.copyfile(demo_export.path, model)
    shutil.copyfile(demo_export.reference_path, folder / "googlenet.reference.npz")
    return model, Reference.load(folder / "googlenet.reference.npz")


def _scaled(model: Path, conv: int, factor: float, out: Path) -> tuple[Path, str]:
    """A copy of ``model`` with the weights of its ``conv``-th Conv times ``factor``: (file, that node's name)."""
    m = onnx.load(str(model))
    node = [n for n in m.graph.node if n.op_type == "Conv"][conv]
    weight = next(i for i in m.graph.initializer if i.name == node.input[1])
    weight.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(weight) * np.float32(factor), weight.name))
    onnx.save(m, str(out))
    return out, node.name


def _upstream_clean(report: dict) -> bool:
    index = report["verdict"]["index"]
    return all(s["rel_l2"] is None or s["rel_l2"] <= report["budget"] for s in report["stats"] if s["index"] < index)


@pytest.mark.parametrize("provider", [provider_param("cpu"), provider_param("openvino"), provider_param("opencv")])
@pytest.mark.parametrize("conv", CONVS)
def test_an_injected_fault_is_named_in_both_modes(demo, tmp_path, provider, conv):
    model, reference = demo
    candidate, node = _scaled(model, conv, -1.0 if conv == 30 else 2.0, tmp_path / "bad.onnx")
    modes = ["bisect"] if provider == "opencv" else ["mark-all", "bisect"]  # cv2.dnn gives one output at a time
    for mode in modes:
        report = diagnose(model, candidate, provider, "fp32", reference, reference.inputs[0], mode=mode)
        verdict = report["verdict"]
        assert report["mode"] == mode
        assert verdict["kind"] == "culprit" and verdict["node"] == node and verdict["op"] == "Conv", report["line"]
        assert verdict["local"] > 0.5 and verdict["inherited"] < BUDGETS["fp32"], verdict
        assert _upstream_clean(report)


def test_the_cli_reports_the_culprit_as_json_and_writes_a_reproduction(demo, tmp_path):
    model, reference = demo
    candidate, node = _scaled(model, 30, 2.0, tmp_path / "bad.onnx")
    proc = subprocess.run([sys.executable, "-m", "runtimes.diverge", "--model", str(model), "--provider", "cpu",
                           "--candidate", str(candidate), "--json", "--out", str(tmp_path / "out")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    verdict = json.loads(proc.stdout)["verdict"]
    assert verdict["kind"] == "culprit" and verdict["node"] == node and verdict["tensor"].startswith(node.rsplit("/", 1)[0])
    assert f"culprit: Conv {node}" in proc.stderr and "rel L2" in proc.stderr
    reduced = onnx.load(str(tmp_path / "out" / "reduced.onnx"))
    assert [n.name for n in reduced.graph.node] == [node]
    with np.load(tmp_path / "out" / "inputs.npz", allow_pickle=False) as inputs:
        feeds = {name: inputs[name] for name in inputs.files}
    import onnxruntime as ort

    out = ort.InferenceSession(reduced.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["verdict"] == verdict
    honest = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    assert out.shape[0] == 1 and np.isfinite(out).all() and honest is not None


def test_a_broken_int8_scale_names_its_layer(demo, demo_int8, tmp_path):
    model, reference = demo
    q = onnx.load(str(demo_int8.path))
    producers = {o: n for n in q.graph.node for o in n.output}
    conv = [n for n in q.graph.node if n.op_type == "Conv"][20]
    scale = next(i for i in q.graph.initializer if i.name == producers[conv.input[1]].input[1])
    scale.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(scale) * np.float32(10), scale.name))
    onnx.save(q, str(tmp_path / "bad.int8.onnx"))
    report = diagnose(model, tmp_path / "bad.int8.onnx", "cpu", "int8", reference, reference.inputs[0])
    verdict = report["verdict"]
    assert verdict["kind"] == "culprit" and verdict["node"] == conv.name, report["line"]
    assert verdict["suggestion"].endswith(f"--keep-fp32 classifier,{conv.name}")
    assert _upstream_clean(report)


def test_noise_on_every_conv_is_accumulated_error_not_a_culprit(demo, tmp_path):
    model, reference = demo
    m = onnx.load(str(model))
    rng = np.random.default_rng(0)
    for node in (n for n in m.graph.node if n.op_type == "Conv"):
        weight = next(i for i in m.graph.initializer if i.name == node.input[1])
        values = onnx.numpy_helper.to_array(weight)
        noise = rng.uniform(-1, 1, values.shape).astype(np.float32) * np.float32(1e-3 * np.abs(values).mean())
        weight.CopyFrom(onnx.numpy_helper.from_array(values + noise, weight.name))
    onnx.save(m, str(tmp_path / "noisy.onnx"))
    report = diagnose(model, tmp_path / "noisy.onnx", "cpu", "fp32", reference, reference.inputs[0])
    assert report["verdict"]["kind"] == "accumulated", report["line"]
    assert report["logits_rel_l2"] > 10 * BUDGETS["fp32"]
    growth = [rel for _, _, rel in report["verdict"]["growth"]]
    assert growth[-1] > 5 * growth[0], "the error grows through the network"
    assert report["line"].startswith("accumulated error, no single culprit")


def _with_variant(provider: str, variant: str | None):
    param = provider_param(provider)
    return pytest.param(provider, variant, marks=param.marks, id=f"{provider}-{variant or 'fp32'}")


@pytest.mark.parametrize(("provider", "variant"), [_with_variant("openvino", None), _with_variant("cpu", "int8")])
def test_an_honest_candidate_shows_no_divergence(demo, demo_int8, provider, variant):
    model, reference = demo
    candidate = demo_int8.path if variant else model
    report = diagnose(model, candidate, provider, variant or "fp32", reference, reference.inputs[1])
    assert report["verdict"]["kind"] == "none", report["line"]
    observed = [s["rel_l2"] for s in report["stats"] if s["rel_l2"] is not None]
    assert len(observed) > 50 and max(observed) <= report["budget"]
    most = report["verdict"]["most_divergent"]
    assert most["rel_l2"] - most["inherited"] == max(s["rel_l2"] - s["inherited"] for s in report["stats"]
                                                     if s["rel_l2"] is not None)
    assert f"the largest step is {most['op']} {most['node']}" in report["line"]


def test_a_reference_that_fails_its_anchor_stops_with_one_line(demo, tmp_path):
    from tests.helpers import save_perturbed_copy

    model, _ = demo
    bad = save_perturbed_copy(model, tmp_path / "nudged.onnx")
    proc = subprocess.run([sys.executable, "-m", "runtimes.diverge", "--model", str(bad), "--provider", "cpu"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: the reference itself") and "re-export" in proc.stderr


def test_verify_locate_names_the_layer_of_the_first_failing_check(demo, demo_int8, tmp_path):
    model, _ = demo
    folder = model.parent
    q = onnx.load(str(demo_int8.path))
    producers = {o: n for n in q.graph.node for o in n.output}
    conv = [n for n in q.graph.node if n.op_type == "Conv"][40]
    scale = next(i for i in q.graph.initializer if i.name == producers[conv.input[1]].input[1])
    scale.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(scale) * np.float32(-8), scale.name))
    onnx.save(q, str(folder / "googlenet.int8.onnx"))  # a variant beside its parent: judged by the parent's answers
    proc = subprocess.run([sys.executable, "-m", "runtimes.verify", "--model", str(folder / "googlenet.int8.onnx"),
                           "--locate"], cwd=REPO, capture_output=True, text=True, timeout=120)
    (folder / "googlenet.int8.onnx").unlink()
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert f"culprit: Conv {conv.name}" in proc.stdout, proc.stdout
