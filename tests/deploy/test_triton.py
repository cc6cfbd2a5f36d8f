"""Triton model repositories: config.pbtxt parses strictly as Triton's ModelConfig and agrees with the ONNX model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from deploy.triton import write_repository

REPO = Path(__file__).resolve().parents[2]


def _parse(path: Path) -> pb.ModelConfig:
    return text_format.Parse(path.read_text(), pb.ModelConfig())  # unknown fields raise


def test_repository_agrees_with_the_onnx_model(demo_export, tmp_path):
    folder = write_repository(demo_export.path, tmp_path / "repo", max_batch=16, instances=2)
    config = _parse(folder / "config.pbtxt")
    graph = onnx.load(str(folder / "1" / "model.onnx")).graph
    dims = lambda value: [d.dim_value or d.dim_param for d in value.type.tensor_type.shape.dim]  # noqa: E731
    (inp,), (out,) = config.input, config.output
    assert (inp.name, ["batch", *inp.dims]) == (graph.input[0].name, dims(graph.input[0]))
    assert (out.name, ["batch", *out.dims]) == (graph.output[0].name, dims(graph.output[0]))
    assert inp.data_type == out.data_type == pb.TYPE_FP32
    assert (folder / "1" / "model.onnx").read_bytes() == demo_export.path.read_bytes()
    assert (folder / out.label_filename).read_text().splitlines() == list(demo_export.spec.labels)
    assert config.backend == "onnxruntime" and config.max_batch_size == 16
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8, 16]
    assert [(g.count, g.kind) for g in config.instance_group] == [(2, pb.ModelInstanceGroup.KIND_CPU)]
    assert not config.optimization.execution_accelerators.gpu_execution_accelerator
    warmup = config.model_warmup[0].inputs[inp.name]
    assert list(warmup.dims) == list(inp.dims) and warmup.zero_data


def test_gpu_with_tensorrt_fp16_uses_the_backends_parameter_names(demo_export, tmp_path):
    config = _parse(write_repository(demo_export.path, tmp_path, gpu=True, tensorrt_fp16=True) / "config.pbtxt")
    assert config.instance_group[0].kind == pb.ModelInstanceGroup.KIND_GPU
    (trt,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert trt.name == "tensorrt"
    assert dict(trt.parameters) == {
        "precision_mode": "FP16", "max_workspace_size_bytes": str(1 << 30),
        "trt_engine_cache_enable": "1", "trt_engine_cache_path": "/tmp/triton-trt-cache",
    }


def test_the_parse_is_strict():
    """What makes the checks above mean something: a misspelt field is refused."""
    with pytest.raises(text_format.ParseError, match="label_file"):
        text_format.Parse('output { name: "logits" label_file: "labels.txt" }', pb.ModelConfig())


def test_tensorrt_without_gpu_is_one_line(demo_export, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "deploy.triton", "--model", str(demo_export.path), "--out", str(tmp_path), "--tensorrt-fp16"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr == "error: --tensorrt-fp16 needs --gpu: TensorRT runs on GPU instances only\n"
    assert list(tmp_path.iterdir()) == []


def test_a_graph_fixed_at_batch_1_is_not_batched_by_triton(demo_export, tmp_path):
    """Triton refuses max_batch_size > 0 for a model without a free batch axis (the Model Zoo case)."""
    model = onnx.load(str(demo_export.path))
    for value in (model.graph.input[0], model.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(model, str(tmp_path / "fixed.onnx"))
    config = _parse(write_repository(tmp_path / "fixed.onnx", tmp_path / "repo") / "config.pbtxt")
    (inp,), (out,) = config.input, config.output
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert list(inp.dims) == [1, 3, 224, 224] and list(out.dims) == [1, len(demo_export.spec.labels)]
    assert list(config.model_warmup[0].inputs[inp.name].dims) == [1, 3, 224, 224]
    proc = subprocess.run(
        [sys.executable, "-m", "deploy.triton", "--model", str(tmp_path / "fixed.onnx"), "--out", str(tmp_path / "r2"),
         "--max-batch", "8"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error: fixed.onnx is fixed at batch 1, so Triton cannot batch it")
    assert not (tmp_path / "r2").exists()
