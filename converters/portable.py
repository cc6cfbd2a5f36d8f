"""Graph rewrites that make the exported model run the same on every runtime.

MaxPool with ``ceil_mode=1`` is a known cross-runtime hazard: OpenVINO, ONNX Runtime,
ONNX's own reference implementation and the ONNX-to-TFLite converters have each had
bugs with it (ONNX's ``ReferenceEvaluator`` computes a wrong output size and fails at
GoogLeNet's first Concat). Both GoogLeNet layouts export 13 such pools. Padding never
wins a max, so a ceil-mode pool equals a floor-mode pool whose end pads are widened
just enough to reach the same output size; at a static spatial size that is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import onnx
from onnx import helper


@dataclass(frozen=True)
class PoolRewrite:
    node: str
    pads_before: tuple[int, ...]
    pads_after: tuple[int, ...]


def _spatial_dims(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Static spatial dims (after N and C) of every tensor shape inference can size."""
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    dims = {}
    for value in (*graph.input, *graph.value_info, *graph.output):
        shape = value.type.tensor_type.shape.dim[2:]
        if shape and all(d.HasField("dim_value") for d in shape):
            dims[value.name] = tuple(d.dim_value for d in shape)
    return dims


def _floor_pads(size: int, kernel: int, stride: int, dilation: int, begin: int, end: int) -> int | None:
    """The end pad that gives a floor-mode pool the ceil-mode output length, or None if none can."""
    span = (kernel - 1) * dilation + 1
    out = math.ceil((size + begin + end - span) / stride) + 1
    if (out - 1) * stride >= size + begin:  # the last window must start inside the input (ONNX, PyTorch)
        out -= 1
    new_end = max(end, (out - 1) * stride + span - size - begin)
    if (size + begin + new_end - span) // stride + 1 != out or new_end >= span:
        return None  # runtimes reject a pad as wide as the window
    return new_end


def rewrite_ceil_pools(model: onnx.ModelProto) -> tuple[list[PoolRewrite], list[str]]:
    """Turn every ceil-mode MaxPool into floor mode with explicit end pads, in place.

    Returns (rewritten pools, pools left as they were with the reason). A pool is left
    alone when its input's spatial size is not static or no pad reproduces its output.
    """
    dims = _spatial_dims(model)
    done, kept = [], []
    for node in model.graph.node:
        if node.op_type != "MaxPool":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if not attrs.get("ceil_mode"):
            continue
        auto_pad = attrs.get("auto_pad", b"NOTSET")
        sizes = dims.get(node.input[0])
        if auto_pad not in (b"NOTSET", "NOTSET") or sizes is None:
            kept.append(f"{node.name}: {'auto_pad' if sizes else 'input size is not static'}")
            continue
        n = len(sizes)
        kernel = attrs["kernel_shape"]
        strides = attrs.get("strides", [1] * n)
        dilations = attrs.get("dilations", [1] * n)
        pads = attrs.get("pads", [0] * 2 * n)
        ends = [_floor_pads(sizes[i], kernel[i], strides[i], dilations[i], pads[i], pads[n + i]) for i in range(n)]
        if None in ends:
            kept.append(f"{node.name}: no floor-mode padding gives the same output size")
            continue
        new_pads = [*pads[:n], *ends]
        for attr in list(node.attribute):
            if attr.name in ("ceil_mode", "pads"):
                node.attribute.remove(attr)
        node.attribute.extend([helper.make_attribute("ceil_mode", 0), helper.make_attribute("pads", new_pads)])
        done.append(PoolRewrite(node.name, tuple(pads[:n]), tuple(ends)))
    return done, kept


def ceil_mode_pools(model: onnx.ModelProto) -> list[str]:
    """Names of the MaxPool nodes that still use ceil_mode=1."""
    return [
        node.name
        for node in model.graph.node
        if node.op_type == "MaxPool"
        and any(a.name == "ceil_mode" and helper.get_attribute_value(a) for a in node.attribute)
    ]
