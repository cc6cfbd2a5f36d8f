"""converters.quantize gates its own output and --repair fixes what int8 breaks, on real
ONNX Runtime and OpenVINO: outlier channels (equalization alone), a layer whose int8 weights
cannot hold it (exactly that layer kept in fp32), and a model beyond the limits (exit 3 and
the evidence). The models are the demo export with faults put in (``tests.converters.faults``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from converters.equalize import equalize, pairs
from converters.quantize import GateFailed, quantize
from runtimes.spec import ModelSpec
from tests.converters.faults import OUTLIER_PLACES, broken_weights, outliers

REPO = Path(__file__).resolve().parents[2]
CALIB = 32  # images: enough for these faults, and each quantize stays a few seconds
BROKEN = "/conv3/conv/Conv"


@pytest.fixture(scope="session")
def faulty(tmp_path_factory, demo_export) -> Path:
    """A folder holding the demo export and its reference answers, for the faulty models beside them."""
    import shutil

    folder = tmp_path_factory.mktemp("faulty")
    shutil.copy(demo_export.path, folder / "demo.onnx")
    shutil.copy(demo_export.path.with_name("demo.reference.npz"), folder / "demo.reference.npz")
    return folder


@pytest.fixture(scope="session")
def outlier_repair(faulty):
    """The outlier model at three places with scale 256, repaired for cpu and openvino."""
    model = faulty / "outlier.onnx"
    readers = outliers(faulty / "demo.onnx", model, places=(0, 8, 15), scale=256.0)
    result = quantize(model, "int8", calib_count=CALIB, repair=True, targets=["cpu", "openvino"])
    return model, readers, result


def test_equalization_leaves_the_fp32_function_and_undoes_an_outlier_channel(faulty):
    import onnxruntime as ort

    model = faulty / "outlier-eq.onnx"
    outliers(faulty / "demo.onnx", model, places=(0,), scale=512.0)
    m = onnx.load(str(model))
    assert len(pairs(m)) == 19
    scales = equalize(m)
    assert scales["/conv2/conv/Conv->/conv3/conv/Conv"] > 100  # the outlier channel brought back by ~512
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)

    def run(proto):
        return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]

    before, after = run(onnx.load(str(model))), run(m)
    assert np.abs(after - before).max() < 1e-4 * np.abs(before).max()
    w = {i.name: onnx.numpy_helper.to_array(i) for i in m.graph.initializer}
    conv2 = next(n for n in m.graph.node if n.name == "/conv2/conv/Conv")
    ranges = np.abs(w[conv2.input[1]]).reshape(len(w[conv2.input[1]]), -1).max(axis=1)
    assert ranges.max() < 20 * np.median(ranges)  # no channel 512 times the others any more


def test_plain_int8_that_fails_its_gate_exits_3_in_one_line_and_writes_nothing(faulty, tmp_path):
    model = faulty / "outlier-plain.onnx"
    outliers(faulty / "demo.onnx", model, places=OUTLIER_PLACES, scale=512.0)
    out = tmp_path / "plain.int8.onnx"
    args = [sys.executable, "-m", "converters.quantize", "--model", str(model), "--precision", "int8",
            "--calib-count", str(CALIB), "--out", str(out)]
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and proc.stderr.rstrip().endswith(errors[0]), proc.stderr
    assert "fails its gate, so it was not written: cpu: top-1" in errors[0] and "--repair" in errors[0]
    assert not out.exists() and not list(tmp_path.iterdir())


def test_repair_equalizes_outlier_channels_and_passes_on_cpu_and_openvino(outlier_repair):
    from runtimes.verify import verify

    model, readers, result = outlier_repair
    repair = result.repaired
    assert repair.passed and result.gate.passed, repair.steps()
    assert [a.step.split(" ")[0] for a in repair.attempts] == ["plain", "equalize"], repair.steps()
    assert not repair.attempts[0].gate.passed  # plain int8 failed, on both targets
    assert all(not t.passed for t in repair.attempts[0].gate.targets)
    assert repair.fp32_nodes == [] and repair.ranges == {}  # the free fix was enough
    assert {f"{pair.split('->')[1]}" for pair in repair.equalized} >= set(readers)
    assert [t.target for t in result.gate.targets] == ["cpu", "openvino"] and result.gate.passed
    spec = ModelSpec.from_onnx(result.path)
    assert spec.variant["repair"]["passed"] and spec.variant["fp32_layers"] == ["/fc/Gemm"]
    assert spec.variant["gate"]["passed"] and spec.variant["parent_sha256"]
    assert repair.speed["kept"] > 0.7, repair.speed  # equal graphs: noise only
    report = json.loads(result.report.read_text())
    assert report["repair"]["attempts"][0]["worst_top1"] < 0.97 and report["repair"]["attempts"][-1]["passed"]
    for provider in ("cpu", "openvino"):  # the written file, as a device checks it
        assert verify(model=result.path, provider=provider, out=open("/dev/null", "w")) == 0


def test_the_locator_names_the_tensor_and_its_suggestion_is_what_repairs(faulty, tmp_path):
    from runtimes.diagnosis import diagnose
    from runtimes.reference import Reference

    model = faulty / "outlier-one.onnx"
    outliers(faulty / "demo.onnx", model, places=(0,), scale=512.0)
    # --allow-failing writes a failing variant, the failure in its spec; deploy.bundle refuses to ship it
    plain = quantize(model, "int8", calib_count=CALIB, allow_failing=True)
    assert not plain.gate.passed and plain.path == model.with_name("outlier-one.int8.onnx")
    gate = ModelSpec.from_onnx(plain.path).variant["gate"]
    assert gate["passed"] is False and "cpu: top-1" in gate["summary"]
    proc = subprocess.run([sys.executable, "-m", "deploy.bundle", "--model", str(model), "--variants", "int8",
                           "--out", str(tmp_path / "b")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "failed its gate when converters.quantize made it" in proc.stderr, proc.stderr
    assert not (tmp_path / "b").exists()
    reference = Reference.load(model.with_name("outlier-one.reference.npz"))
    verdict = diagnose(model, plain.path, "cpu", "int8", reference, reference.inputs[1])["verdict"]
    assert verdict["fault"] == "input" and verdict["input_tensor"] == "/conv2/Relu_output_0", verdict
    assert verdict["keep_fp32"] == ["/conv2/conv/Conv", "/conv2/Relu", "/conv3/conv/Conv"]
    assert "--repair" in verdict["suggestion"] and "--keep-fp32 classifier,/conv2/conv/Conv" in verdict["suggestion"]
    # keeping only the reader in fp32 (the old suggestion) still reads the crushed tensor; the unit fixes it
    reader = quantize(model, "int8", calib_count=CALIB, keep_fp32=["classifier", "/conv3/conv/Conv"],
                      allow_failing=True, out=tmp_path / "reader.onnx")
    unit = quantize(model, "int8", calib_count=CALIB, keep_fp32=["classifier", *verdict["keep_fp32"]],
                    out=tmp_path / "unit.onnx")
    assert not reader.gate.passed and unit.gate.passed, (reader.gate.summary(), unit.gate.summary())


def test_a_layer_int8_cannot_hold_is_kept_in_fp32_and_nothing_else(faulty):
    model = faulty / "broken.onnx"
    broken_weights(faulty / "demo.onnx", model, [BROKEN])
    result = quantize(model, "int8", calib_count=CALIB, repair=True)
    repair = result.repaired
    assert repair.passed, repair.steps()
    assert repair.fp32_nodes == [BROKEN], repair.steps()
    assert ModelSpec.from_onnx(result.path).variant["fp32_layers"] == ["/fc/Gemm", BROKEN]
    steps = [a.step for a in repair.attempts]
    assert steps[0] == "plain int8" and steps[1].startswith("equalize") and steps[-1] == f"keep {BROKEN} in fp32"
    assert not repair.attempts[1].gate.passed  # equalization cannot fix weights
    assert "computes wrongly in int8 on its own" in repair.attempts[-1].found


def test_a_model_beyond_the_limits_exits_3_with_what_was_tried(faulty, tmp_path):
    model = faulty / "broken3.onnx"
    layers = [BROKEN, "/inception4a/branch2/branch2.1/conv/Conv", "/inception4d/branch3/branch3.1/conv/Conv"]
    broken_weights(faulty / "demo.onnx", model, layers)
    out, report = tmp_path / "b.int8.onnx", tmp_path / "report.json"
    with pytest.raises(GateFailed) as failed:  # runtimes.cli prints it as one error line, exit 3
        quantize(model, "int8", calib_count=CALIB, repair=True, max_fp32_nodes=1, out=out, report=report)
    error = str(failed.value)
    assert "\n" not in error and error.startswith("--repair found no int8 variant that passes: plain int8: top-1")
    assert f"keep {BROKEN} in fp32: top-1" in error and "--max-fp32-nodes 1" in error
    assert not out.exists()
    record = json.loads(report.read_text())["repair"]
    assert not record["passed"] and len(record["attempts"]) == 3
    assert all(not a["passed"] and 0 <= a["worst_top1"] < 0.97 for a in record["attempts"])


def test_a_repaired_variant_is_bundled_and_tuned_with_its_record(outlier_repair, tmp_path):
    import shutil

    from runtimes import tune

    model, _, result = outlier_repair
    proc = subprocess.run([sys.executable, "-m", "deploy.bundle", "--model", str(model), "--variants", "int8",
                           "--out", str(tmp_path / "b")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "int8 was repaired by converters.quantize --repair" in proc.stdout
    manifest = json.loads((tmp_path / "b" / "bundle.json").read_text())
    int8 = next(m for m in manifest["models"] if m["precision"] == "int8")
    assert int8["spec"]["variant"]["repair"]["equalized_pairs"]
    table = tmp_path / "table.md"
    with open(table, "w") as out:
        status = tune.tune(tune._parse_args(["--bundle", str(tmp_path / "b"), "--providers", "cpu", "--precisions",
                                             "fp32,int8", "--threads", "2", "--budget-s", "8"]), out=out,
                           err=open("/dev/null", "w"))
    text = table.read_text()
    assert status == 0, text
    assert "int8 is repaired (converters.quantize --repair): plain int8: top-1" in text
    assert "of the plain int8 model's" in text
    shutil.rmtree(tmp_path / "b")


def test_a_target_runtime_missing_here_is_one_line_before_any_work(demo_export, monkeypatch, tmp_path):
    from runtimes.adapters import RUNNERS
    from runtimes.errors import ProviderError

    monkeypatch.setitem(RUNNERS, "elsewhere", "not_installed_runtime.adapter:Runner")
    with pytest.raises(ProviderError, match=r"^--targets elsewhere: its package not_installed_runtime is not installed"):
        quantize(demo_export.path, "int8", targets=["cpu", "elsewhere"], out=tmp_path / "q.onnx")
    assert not list(tmp_path.iterdir())


def test_re_ranging_clips_rare_extremes_that_min_max_would_keep():
    from converters.ranges import tensor_range

    rng = np.random.default_rng(0)
    values = np.maximum(rng.standard_normal(200_000), 0.0)  # a Relu's output
    values[:20] = 400.0  # 0.01% of spikes: min-max would give the rest 1 or 2 of 256 levels
    for method in ("percentile 99.99", "percentile 99.9", "entropy"):
        low, high = tensor_range(values, method)
        assert low == 0.0 and 2.0 < high < 40.0, (method, high)
    low, high = tensor_range(values - 1.0, "entropy")  # signed: one threshold for both sides
    assert low == -high and high < 40.0
