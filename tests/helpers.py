"""Model files the tests derive from an export: an fp16 variant, a perturbed copy."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import onnx

from runtimes.reference import reference_path_for
from runtimes.spec import METADATA_KEY, ModelSpec


def _set_spec(model: onnx.ModelProto, spec: ModelSpec) -> None:
    props = {p.key: p.value for p in model.metadata_props}
    props[METADATA_KEY] = spec.to_json()
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)


def save_fp16_variant(model_path: Path, out: Path) -> Path:
    """ONNX Runtime's own fp32 -> fp16 conversion (fp32 inputs and outputs kept), spec marked fp16."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    half = convert_float_to_float16(onnx.load(str(model_path)), keep_io_types=True)
    _set_spec(half, dataclasses.replace(ModelSpec.from_onnx(model_path), precision="fp16"))
    onnx.save(half, str(out))
    return out


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
