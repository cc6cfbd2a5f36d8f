"""LRN as Mul/Conv/Sqrt/Div: the same numbers as PyTorch's and ONNX Runtime's LRN, and the export's default."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

import converters.lrn as lrn_mod
from converters.export import export
from converters.lrn import rewrite_lrn


def _lrn_model(channels: int, size: int, alpha: float, beta: float, bias: float) -> onnx.ModelProto:
    node = helper.make_node("LRN", ["x"], ["y"], name="lrn", size=size, alpha=alpha, beta=beta, bias=bias)
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, channels, 5, 7])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, channels, 5, 7])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize(
    ("channels", "size", "alpha", "beta", "bias"),
    [(64, 5, 1e-4, 0.75, 1.0), (192, 5, 1e-4, 0.75, 1.0), (7, 3, 0.5, 0.75, 2.0), (9, 7, 0.3, 0.6, 1.5), (3, 5, 2.0, 0.5, 1.0)],
)
def test_rewrite_matches_pytorch_and_the_native_op(channels, size, alpha, beta, bias):
    # Large inputs make the squared-sum term matter, so a wrong window or alpha shows.
    x = np.random.default_rng(channels).normal(0, 30, (2, channels, 5, 7)).astype(np.float32)
    expected = torch.nn.functional.local_response_norm(torch.from_numpy(x), size, alpha, beta, bias).numpy()
    model = _lrn_model(channels, size, alpha, beta, bias)
    native = _run(model, x)
    assert rewrite_lrn(model) == 1
    assert [n.op_type for n in model.graph.node].count("LRN") == 0
    onnx.checker.check_model(model, full_check=True)
    rewritten = _run(model, x)
    np.testing.assert_allclose(rewritten, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rewritten, native, rtol=1e-5, atol=1e-6)


def test_export_keeps_the_native_op_when_asked(tmp_path, demo_ckpt):
    result = export(demo_ckpt, tmp_path / "native.onnx", keep_lrn=True)
    ops = [n.op_type for n in onnx.load(str(result.path)).graph.node]
    assert ops.count("LRN") == 2 and result.report["provenance"]["lrn"] == "native"


def test_a_rewrite_that_misses_parity_falls_back_to_the_native_op(tmp_path, demo_ckpt, monkeypatch, caplog):
    real = lrn_mod._band
    monkeypatch.setattr(lrn_mod, "_band", lambda c, size, alpha: real(c, size, alpha * 1000))
    result = export(demo_ckpt, tmp_path / "fallback.onnx")
    assert result.report["provenance"]["lrn"] == "native (the rewrite missed parity)"
    assert [n.op_type for n in onnx.load(str(result.path)).graph.node].count("LRN") == 2
    assert "the LRN rewrite misses parity" in caplog.text
    assert all(p["passed"] for p in result.report["parity"])
