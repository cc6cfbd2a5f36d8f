"""Ceil-mode MaxPools become floor-mode pools with explicit pads, and nothing changes but portability."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from converters.checkpoint import build_model, load_checkpoint
from converters.export import export
from converters.portable import ceil_mode_pools, rewrite_ceil_pools
from tests.conftest import save_training_checkpoint


def _pool_model(size: int, kernel: int, stride: int, pad: int) -> onnx.ModelProto:
    node = helper.make_node(
        "MaxPool", ["x"], ["y"], name="pool", kernel_shape=[kernel, kernel], strides=[stride, stride],
        pads=[pad, pad, pad, pad], ceil_mode=1,
    )
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


# GoogLeNet's own pools (112/56/28/14 with 3x3/2, 14 with 2x2/2, 3x3/1 pad 1), then odd
# sizes, pads, and the case where ceil mode's last window would start in the padding.
CASES = [(112, 3, 2, 0), (56, 3, 2, 0), (14, 2, 2, 0), (28, 3, 1, 1), (7, 3, 2, 1), (9, 2, 2, 1), (10, 3, 3, 1), (5, 2, 2, 1), (13, 3, 2, 0)]


@pytest.mark.parametrize(("size", "kernel", "stride", "pad"), CASES)
def test_rewritten_pool_equals_pytorch_ceil_mode(size, kernel, stride, pad):
    x = np.random.default_rng(size).standard_normal((1, 2, size, size), dtype=np.float32)
    expected = torch.nn.functional.max_pool2d(torch.from_numpy(x), kernel, stride, pad, ceil_mode=True).numpy()
    model = _pool_model(size, kernel, stride, pad)
    rewritten, kept = rewrite_ceil_pools(model)
    assert len(rewritten) == 1 and kept == [] and ceil_mode_pools(model) == []
    for out in (_ort(model, x), ReferenceEvaluator(model).run(None, {"x": x})[0]):
        assert out.shape == expected.shape
        np.testing.assert_array_equal(out, expected)


def test_a_pool_without_static_size_is_kept():
    model = _pool_model(8, 3, 2, 0)
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "h"
    rewritten, kept = rewrite_ceil_pools(model)
    assert rewritten == [] and "input size is not static" in kept[0] and ceil_mode_pools(model) == ["pool"]


@pytest.fixture(scope="module")
def tv_pair(tmp_path_factory):
    """One torchvision-layout checkpoint exported with the rewrite (default) and without it."""
    tmp = tmp_path_factory.mktemp("pools")
    ckpt = save_training_checkpoint(tmp / "tv.pth", "torchvision", num_classes=7, seed=2)
    return ckpt, export(ckpt, tmp / "portable.onnx"), export(ckpt, tmp / "kept.onnx", keep_ceil_pools=True)


def test_default_export_has_no_ceil_mode_pool_and_the_option_keeps_all_13(tv_pair, paper_export):
    _, portable, kept = tv_pair
    assert ceil_mode_pools(onnx.load(str(paper_export.path))) == []
    assert ceil_mode_pools(onnx.load(str(portable.path))) == []
    assert len(ceil_mode_pools(onnx.load(str(kept.path)))) == 13
    assert portable.report["provenance"]["ceil_mode_pools"] == {"rewritten": 13, "kept": 0}
    assert kept.report["provenance"]["ceil_mode_pools"] == {"rewritten": 0, "kept": 13}


def test_onnx_reference_evaluator_runs_the_rewritten_graph_and_matches_pytorch(tv_pair):
    """ONNX's own reference implementation is the portability oracle: it fails on the
    ceil-mode graph (a shape mismatch at the first Concat) and matches PyTorch after the
    rewrite. Not on the paper layout: the evaluator's own LRN is wrong."""
    ckpt, portable, kept = tv_pair
    x = np.random.default_rng(3).standard_normal((1, 3, 224, 224), dtype=np.float32)
    with torch.inference_mode():
        expected = build_model(load_checkpoint(ckpt), transform_input=True)(torch.from_numpy(x)).numpy()
    out = ReferenceEvaluator(onnx.load(str(portable.path))).run(None, {"input": x})[0]
    assert np.abs(out - expected).max() < 1e-4
    with pytest.raises(ValueError, match="dimensions except for the concatenation axis must match"):
        ReferenceEvaluator(onnx.load(str(kept.path))).run(None, {"input": x})


def test_both_graphs_give_pytorch_answers_on_onnx_runtime(tv_pair):
    ckpt, portable, kept = tv_pair
    x = np.random.default_rng(4).standard_normal((3, 3, 224, 224), dtype=np.float32)
    with torch.inference_mode():
        expected = build_model(load_checkpoint(ckpt), transform_input=True)(torch.from_numpy(x)).numpy()
    for result in (portable, kept):
        session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
        assert np.abs(session.run(None, {"input": x})[0] - expected).max() < 1e-4
    assert json.loads(json.dumps(portable.report["parity"]))[0]["passed"]
