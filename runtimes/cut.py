"""Cutting an ONNX graph at named tensors, and running the part on the reference or a candidate
runtime: what ``runtimes.locate`` probes with. Needs the ``onnx`` package, not torch.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from runtimes.errors import ToolkitError


class LocateError(ToolkitError):
    """The locator cannot run as asked."""


def onnx_module():
    try:
        import onnx
    except ImportError:
        raise LocateError("runtimes.diverge needs the onnx package (no torch): pip install onnx") from None
    return onnx


# --- graphs -------------------------------------------------------------------------------


def elem_types(model) -> dict[str, int]:
    """Every tensor's ONNX element type, followed through the graph (shape inference gives
    up on some graphs; the types alone are enough to cut and mark them)."""
    onnx = onnx_module()
    types = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    for node in model.graph.node:
        attrs = {a.name: a for a in node.attribute}
        if node.op_type == "Cast":
            out = attrs["to"].i
        elif node.op_type == "DequantizeLinear":
            out = types.get(node.input[1], onnx.TensorProto.FLOAT)
        elif node.op_type == "QuantizeLinear":
            out = types.get(node.input[2], onnx.TensorProto.UINT8) if len(node.input) > 2 else onnx.TensorProto.UINT8
        elif node.op_type in ("Shape", "Size", "NonZero", "ArgMax", "ArgMin"):
            out = onnx.TensorProto.INT64
        else:
            out = next((types[i] for i in node.input if i in types), onnx.TensorProto.FLOAT)
        for name in node.output:
            types[name] = out
    return types


def cut(model, feeds: dict[str, np.ndarray], outputs: list[str], shapes: dict[str, tuple] | None = None):
    """The part of ``model`` that computes ``outputs`` from the tensors ``feeds`` names (shaped
    as those arrays) and the initializers; with ``feeds`` holding just the graph input, the
    whole model with ``outputs`` as its outputs. ``shapes`` gives the outputs' shapes where
    known (OpenCV 4.x imports no output without one)."""
    shapes = shapes or {}
    onnx = onnx_module()
    types = elem_types(model)
    producers = {out: node for node in model.graph.node for out in node.output}
    needed, todo = set(), list(outputs)
    while todo:
        name = todo.pop()
        if name in feeds or name not in producers or id(producers[name]) in needed:
            continue
        needed.add(id(producers[name]))
        todo += list(producers[name].input)
    nodes = [node for node in model.graph.node if id(node) in needed]
    used = {name for node in nodes for name in node.input}
    missing = [n for n in used if n and n not in feeds and n not in producers and
               n not in {i.name for i in model.graph.initializer}]
    if missing:
        raise LocateError(f"cannot cut the graph at {outputs}: {missing[0]} is neither fed nor computed")
    graph = onnx.helper.make_graph(
        nodes, "cut",
        [onnx.helper.make_tensor_value_info(n, types[n], list(v.shape)) for n, v in feeds.items() if n in used],
        [onnx.helper.make_tensor_value_info(n, types.get(n, onnx.TensorProto.FLOAT),
                                            list(shapes[n]) if n in shapes else None) for n in outputs],
        initializer=[i for i in model.graph.initializer if i.name in used],
    )
    part = onnx.helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    return part


def input_types(model) -> dict[str, np.dtype]:
    onnx = onnx_module()
    return {i.name: np.dtype(onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)) for i in model.graph.input}


def tensor_map(candidate, reference_names: set[str]) -> dict[str, str]:
    """candidate tensor -> the reference tensor it stands for."""
    producers = {out: node for node in candidate.graph.node for out in node.output}
    found = {}
    for node in candidate.graph.node:
        if node.op_type in ("Cast", "QuantizeLinear"):
            continue
        for out in node.output:
            if node.op_type == "DequantizeLinear":
                source = producers.get(node.input[0])
                if source is not None and source.op_type == "QuantizeLinear" and source.input[0] in reference_names:
                    found[out] = source.input[0]
            elif out in reference_names:
                found[out] = out
    return found


# --- running ---------------------------------------------------------------------------------


def run_reference(model, feeds: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    """``names`` on ONNX Runtime CPU with every graph optimization off."""
    import onnxruntime as ort

    from runtimes.adapters.ort_common import session_options

    options = session_options(None, spinning=False)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(cut(model, feeds, names).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return dict(zip(names, session.run(names, feeds)))


def run_candidate(provider: str, model, feeds: dict[str, np.ndarray], names: list[str],
                  options: dict[str, Any], shapes: dict[str, tuple] | None = None) -> dict[str, np.ndarray]:
    """``names`` of ``model`` on ``provider``; a runtime giving one output at a time is run once per name."""
    from runtimes.adapters import create_runner

    one_at_a_time = provider == "opencv" and len(names) > 1
    groups = [[n] for n in names] if one_at_a_time else [names]
    found: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory(prefix="diverge-") as tmp:
        for i, group in enumerate(groups):
            part = cut(model, feeds, group, shapes)
            path = Path(tmp) / f"part{i}.onnx"
            path.write_bytes(part.SerializeToString())
            types = input_types(part)
            runner = create_runner(provider, path, None, **options).load_graph()
            try:
                found.update(runner.outputs({k: v.astype(types.get(k, v.dtype)) for k, v in feeds.items()
                                             if k in types}, group))
            finally:
                runner.close()
    return found
