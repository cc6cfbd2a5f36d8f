"""What several test modules share: runtime parameters that skip with their reason, tiny
hand-built models, model files derived from an export (an fp16 variant, a perturbed copy), and a
snapshot of a folder that a refusal must leave alone."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from runtimes.adapters import unavailable_reason
from runtimes.reference import reference_path_for


def provider_param(name: str):
    """A pytest parameter for runtime ``name`` that shows as a skip, with the reason, where it cannot run."""
    reason = unavailable_reason(name)
    return pytest.param(name, marks=pytest.mark.skipif(reason is not None, reason=f"{name} unavailable here: {reason}"))


TINY_SIZE = 8  # the tiny models' inputs are N x 3 x 8 x 8


def save_tiny_model(path: Path, nodes: list, initializers: list) -> Path:
    """A three-class model of ``nodes`` (``input`` N x 3 x 8 x 8 -> ``logits`` N x 3) with this toolkit's metadata."""
    from onnx import TensorProto, helper

    from runtimes.spec import METADATA_KEY, ModelSpec

    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, TINY_SIZE, TINY_SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    spec = ModelSpec(labels=("a", "b", "c"), resize_size=TINY_SIZE, crop_size=TINY_SIZE)
    helper.set_model_props(model, {METADATA_KEY: spec.to_json()})
    onnx.save(model, str(path))
    return path


def save_fp16_variant(model_path: Path, out: Path) -> Path:
    """The toolkit's own fp16 variant (``converters.quantize``), checked on a few fresh demo images."""
    from converters.quantize import quantize

    return quantize(model_path, "fp16", calib_count=16, out=out).path


def perturb_fc_bias(model: onnx.ModelProto, delta: float = 0.05) -> onnx.ModelProto:
    """Nudge the fc bias by ``delta`` in place: small, but far outside fp32 tolerance."""
    bias = next(i for i in model.graph.initializer if i.name == "fc.bias")
    values = onnx.numpy_helper.to_array(bias) + np.float32(delta)
    bias.CopyFrom(onnx.numpy_helper.from_array(values.astype(np.float32), "fc.bias"))
    return model


def save_perturbed_copy(model_path: Path, out: Path) -> Path:
    """The model with a nudged fc bias, saved to ``out`` with the original's reference answers beside it."""
    onnx.save(perturb_fc_bias(onnx.load(str(model_path))), str(out))
    shutil.copyfile(reference_path_for(model_path), reference_path_for(out))
    return out


def snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every entry under ``folder``: file bytes, link targets, folders; what a refusal must leave alone."""
    seen = {}
    for top, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(top, name)
            rel = path.relative_to(folder).as_posix()
            seen[rel] = f"-> {os.readlink(path)}" if path.is_symlink() else "dir" if path.is_dir() else path.read_bytes()
    return seen
