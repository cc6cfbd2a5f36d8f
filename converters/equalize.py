"""Cross-layer equalization: rescale the channels between two Convs so int8 can hold them.

For ``Conv A -> Relu -> Conv B``, where B reads nothing but A's output, channel i of A can
be divided by any s_i > 0 and B's input channel i multiplied by it: Relu(x / s) = Relu(x) / s,
so the fp32 function is unchanged. int8 gives all the channels of a tensor one scale
(per-tensor activations), so one channel with a range hundreds of times the others
(an "outlier channel", common in trained networks) leaves the others a few levels, or
none. Equalizing (Nagel et al., "Data-Free Quantization Through Weight Equalization and
Bias Correction", ICCV 2019) picks s_i = sqrt(r_A,i / r_B,i) from the weight ranges, so A's
channel i and B's input channel i end up with the same range sqrt(r_A,i * r_B,i): an
outlier channel made by A's weights goes back into line. It costs nothing at run time:
the graph is the same, with other numbers.

Works on the ONNX model (numpy, no torch). Only ungrouped Convs whose weights and bias are
initializers, with one Relu between them that nothing else reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Pair:
    first: str  # Conv A's node name
    relu: str
    second: str  # Conv B's node name


def _attribute(node, name: str, default):
    return next((a.i for a in node.attribute if a.name == name), default)


def pairs(model) -> list[Pair]:
    """Every ``Conv -> Relu -> Conv`` in ``model`` that can be equalized."""
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in model.graph.output}
    weights = {i.name for i in model.graph.initializer}

    def sole_reader(tensor: str, op: str):
        readers = consumers.get(tensor, [])
        if tensor in outputs or len(readers) != 1 or readers[0].op_type != op:
            return None
        return readers[0]

    found = []
    for a in model.graph.node:
        if a.op_type != "Conv" or _attribute(a, "group", 1) != 1 or not all(n in weights for n in a.input[1:]):
            continue
        relu = sole_reader(a.output[0], "Relu")
        b = relu and sole_reader(relu.output[0], "Conv")
        if b is None or _attribute(b, "group", 1) != 1 or b.input[0] != relu.output[0] or b.input[1] not in weights:
            continue
        found.append(Pair(a.name, relu.name, b.name))
    return found


def _own(model, node, slot: int, initializers: dict) -> None:
    """Give ``node`` its own copy of the initializer in input ``slot`` when another node reads
    it too (the exporter shares equal tensors, such as two all-zero biases)."""
    name = node.input[slot]
    if sum(name == i for n in model.graph.node for i in n.input) == 1:
        return
    copy = model.graph.initializer.add()
    copy.CopyFrom(initializers[name])
    copy.name = f"{name}.{node.name}"
    initializers[copy.name] = copy
    node.input[slot] = copy.name


def equalize(model, chosen: list[Pair] | None = None) -> dict[str, float]:
    """Equalize ``chosen`` pairs (default: all of ``pairs(model)``) of ``model`` in place; returns,
    per pair (``A->B``), the largest factor by which a channel's range was divided."""
    from onnx import numpy_helper

    nodes = {n.name: n for n in model.graph.node}
    initializers = {i.name: i for i in model.graph.initializer}
    report = {}
    for pair in pairs(model) if chosen is None else chosen:
        a, b = nodes[pair.first], nodes[pair.second]
        for node, slot in ((a, 1), (a, 2), (b, 1)):
            if slot < len(node.input) and node.input[slot]:
                _own(model, node, slot, initializers)
        wa = numpy_helper.to_array(initializers[a.input[1]]).astype(np.float64)
        wb = numpy_helper.to_array(initializers[b.input[1]]).astype(np.float64)
        range_a = np.abs(wa).reshape(wa.shape[0], -1).max(axis=1)
        range_b = np.abs(wb).swapaxes(0, 1).reshape(wb.shape[1], -1).max(axis=1)
        scale = np.ones_like(range_a)
        live = (range_a > 0) & (range_b > 0)
        scale[live] = np.sqrt(range_a[live] / range_b[live])
        shape_a = (-1,) + (1,) * (wa.ndim - 1)
        shape_b = (1, -1) + (1,) * (wb.ndim - 2)
        updates = {a.input[1]: wa / scale.reshape(shape_a), b.input[1]: wb * scale.reshape(shape_b)}
        if len(a.input) > 2 and a.input[2]:
            updates[a.input[2]] = numpy_helper.to_array(initializers[a.input[2]]).astype(np.float64) / scale
        for name, value in updates.items():
            dtype = numpy_helper.to_array(initializers[name]).dtype
            initializers[name].CopyFrom(numpy_helper.from_array(value.astype(dtype), name))
        report[f"{pair.first}->{pair.second}"] = float(scale.max())
    return report
