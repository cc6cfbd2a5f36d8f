"""Precision variants: int8 QDQ and fp16, made torch-free, verified before they are written."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from converters.quantize import quantize
from converters.errors import ExportError
from runtimes.spec import ModelSpec

REPO = Path(__file__).resolve().parents[2]


def _dequantized_inputs(model: onnx.ModelProto, node: onnx.NodeProto) -> bool:
    """Both the activation and the weight of ``node`` come out of a DequantizeLinear."""
    producers = {out: n for n in model.graph.node for out in n.output}
    for name in node.input[:2]:
        dq = producers.get(name)
        if dq is None or dq.op_type != "DequantizeLinear":
            return False
        source = producers.get(dq.input[0])
        assert source is None or source.op_type == "QuantizeLinear"  # a quantized weight, or a Q of an activation
    return True


def test_int8_has_dequantized_inputs_on_every_conv_and_gemm_but_the_classifier(demo_int8):
    model = onnx.load(str(demo_int8.path))
    compute = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    assert len(compute) == 57 + 2 + 1  # the convs, the two LRN window sums, the classifier
    assert ModelSpec.from_onnx(demo_int8.path).variant["fp32_layers"] == ["/fc/Gemm"] == [compute[-1].name]
    assert [n.name for n in compute if not _dequantized_inputs(model, n)] == ["/fc/Gemm"]
    weights = {i.name: i for i in model.graph.initializer}
    assert weights[compute[-1].input[1]].data_type == onnx.TensorProto.FLOAT
    types = {i.name: i.data_type for i in model.graph.initializer}
    q_zero_points = [n.input[2] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    # uint8 activations (U8S8): OpenVINO refuses signed int8 activations
    assert q_zero_points and all(types[z] == onnx.TensorProto.UINT8 for z in q_zero_points)


def test_an_fp32_classifier_moves_the_logits_less_than_an_int8_one(demo_export, demo_int8, demo_calib, fresh_images,
                                                                   tmp_path):
    """--keep-fp32 none quantizes every layer; calibrated on the same images, it strays
    further from the fp32 logits (bare ONNX Runtime sessions, numpy's norm)."""
    import numpy as np
    import onnxruntime as ort

    from runtimes import preprocess

    # the very folder demo_int8 was calibrated on (not a regenerated copy of it): the same 108 images
    every = quantize(demo_export.path, "int8", calib=demo_calib, keep_fp32=[], out=tmp_path / "every.int8.onnx")
    assert every.images == demo_int8.images == 108
    model = onnx.load(str(every.path))
    assert all(_dequantized_inputs(model, n) for n in model.graph.node if n.op_type in ("Conv", "Gemm"))
    assert every.spec.variant["fp32_layers"] == []
    files = sorted(fresh_images.rglob("*.jpg"))
    inputs = preprocess.stack([preprocess.load(f.read_bytes(), demo_export.spec) for f in files])

    def logits(path):
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": inputs})[0]

    reference = logits(demo_export.path)

    def error(path):
        return float(np.median(np.linalg.norm(logits(path) - reference, axis=1) / np.linalg.norm(reference, axis=1)))

    assert error(demo_int8.path) < 0.9 * error(every.path)


def test_keep_fp32_names_must_exist(demo_export, tmp_path):
    with pytest.raises(ExportError, match=r"--keep-fp32: no layer named '/fc/Gem' in demo.onnx; .* \.\.\. /fc/Gemm$"):
        quantize(demo_export.path, "int8", calib_count=8, keep_fp32=["classifier", "/fc/Gem"], out=tmp_path / "q.onnx")
    assert not (tmp_path / "q.onnx").exists()


def test_int8_spec_records_how_it_was_made(demo_int8, demo_export):
    spec = ModelSpec.from_onnx(demo_int8.path)
    assert spec.precision == "int8" and spec.labels == demo_export.spec.labels
    assert spec.checkpoint_sha256 == demo_export.spec.checkpoint_sha256
    assert spec.variant["parent_sha256"] == hashlib.sha256(demo_export.path.read_bytes()).hexdigest()
    assert spec.variant["method"] == "minmax" and spec.variant["images"] == 108 == demo_int8.images
    assert len(spec.variant["file_list_sha256"]) == 64
    assert demo_int8.top1_agreement >= 0.97
    assert demo_int8.size_bytes < demo_export.path.stat().st_size / 3  # int8 weights: under a third of fp32


@pytest.mark.parametrize("provider", ["openvino", "opencv"])
def test_int8_runs_on_openvino_and_opencv_too(demo_int8, fresh_images, provider):
    """OpenCV DNN imports the int8 model only because its classifier is fp32: with a QDQ Gemm it does not."""
    from runtimes.adapters import unavailable_reason
    from runtimes.classifier import Classifier
    from samples.generate import label_of

    if unavailable_reason(provider) is not None:
        pytest.skip(f"{provider}: {unavailable_reason(provider)}")
    files = sorted(fresh_images.rglob("*.jpg"))[::9]
    with Classifier(demo_int8.path, provider) as clf:
        predictions = clf.predict(files)
    assert sum(p.topk[0].label == label_of(p.image) for p in predictions) >= len(files) - 1


def test_fp16_keeps_fp32_inputs_and_outputs(demo_export, tmp_path):
    result = quantize(demo_export.path, "fp16", calib_count=16, out=tmp_path / "half.onnx")
    model = onnx.load(str(result.path))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    assert ModelSpec.from_onnx(result.path).precision == "fp16" and result.top1_agreement == 1.0


def test_default_calibration_warns_and_bad_requests_are_one_line(demo_export, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "converters.quantize", "--model", str(demo_export.path), "--precision", "int8",
         "--calib-count", "20", "--out", str(tmp_path / "q.onnx")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "freshly generated demo images" in proc.stderr and "calibrating on 20 images" in proc.stderr
    assert "gate passed: cpu: top-1 100.0% on the 18 reference images" in proc.stdout
    with pytest.raises(ExportError, match="already a int8 model"):
        quantize(tmp_path / "q.onnx", "int8")
    with pytest.raises(ExportError, match="is not a directory of images"):
        quantize(demo_export.path, "int8", calib=tmp_path / "absent")


def test_max_pixels_guards_the_calibration_images(demo_export, tmp_path):
    from samples.generate import IMAGES_DIR

    proc = subprocess.run(
        [sys.executable, "-m", "converters.quantize", "--model", str(demo_export.path), "--precision", "int8",
         "--calib", str(IMAGES_DIR), "--max-pixels", "40000", "--out", str(tmp_path / "q.onnx")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2 and "none of the 18 images could be read" in proc.stderr, proc.stderr
    assert "over the 40,000-pixel limit" in proc.stderr and not (tmp_path / "q.onnx").exists()


def test_quantize_runs_without_torch(demo_export, tmp_path):
    """The int8/fp16 tooling is torch-free: it runs where only the runtime side is installed."""
    code = (
        "import sys, runpy; sys.modules['torch'] = None\n"
        "sys.argv = ['converters.quantize', *sys.argv[1:]]\n"
        "runpy.run_module('converters.quantize', run_name='__main__')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "--model", str(demo_export.path), "--precision", "fp16", "--calib-count", "8",
         "--out", str(tmp_path / "half.onnx")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "half.onnx").is_file()


def test_opencv_runs_the_fp16_variant_right_or_says_in_one_line_why_not(demo_export, demo_fp16):
    """OpenCV DNN and the fp16 variant part differently per CPU and version: 5.1 refuses the
    file at import on AMD Zen 4, imports it and fails at the first inference on an Intel Xeon
    with AVX512-FP16. Wherever it fails, that is one line and exit 2 at load (the warm-up);
    wherever it runs, it gives the fp32 model's label."""
    image = sorted((REPO / "samples" / "images").glob("*.jpg"))[0]
    runs = {}
    for provider, model in (("cpu", demo_export.path), ("opencv", demo_fp16)):
        runs[provider] = subprocess.run(
            [sys.executable, "-m", "runtimes.run", "--provider", provider, "--model", str(model), "--json", "--topk", "1",
             str(image)],
            cwd=REPO, capture_output=True, text=True, timeout=120,
        )
    assert runs["cpu"].returncode == 0, runs["cpu"].stderr
    proc = runs["opencv"]
    if proc.returncode == 0:
        assert json.loads(proc.stdout)["topk"][0]["label"] == json.loads(runs["cpu"].stdout)["topk"][0]["label"]
    else:
        assert proc.returncode == 2 and proc.stdout == "", proc.stderr
        assert proc.stderr.startswith("error: opencv: ") and proc.stderr.count("\n") == 1, proc.stderr
