"""Where a runtime or precision stops giving the reference's answers: the first layer that
diverges, and whether it is a culprit or error accumulated over many layers.

The reference is ONNX Runtime CPU on the fp32 model with every graph optimization off,
so every ONNX tensor exists; its logits must first pass fp32 parity against PyTorch's
recorded answers (the anchor). The candidate is a model file (the fp32 one, a variant,
or any copy derived from it) on a provider. Tensors are matched by name: an fp16 file's
inserted Casts are skipped, and an int8 file's DequantizeLinear output stands for the
fp32 tensor its QuantizeLinear took in.

- mark-all: every matched tensor becomes a graph output and both sides run once.
- bisect: for runtimes that give one output at a time (OpenCV DNN), the candidate graph is
  cut before each probe and a binary search finds the first topological index whose
  frontier diverges.

A tensor diverges when its relative L2 error exceeds the precision's budget and is
``JUMP`` times the error of its inputs. The first diverging nodes are then run alone on
the candidate runtime, fed the reference's own inputs: a large local error names a
culprit; small local errors under a growing total are accumulated error.

An int8 culprit is run alone twice: fed through its input's QuantizeLinear as in the
model, and fed past it (the exact fp32 input, its own int8 weights). When only the first
is wrong, the fault is not the layer but the int8 range of the tensor it reads (an
outlier channel crushing the others to a few levels): the suggestion then names that
tensor's unit, the layer that makes it, its activation and every layer that reads it,
because keeping only the reader in fp32 still reads the quantized tensor.

Needs the ``onnx`` package (no torch): ``pip install onnx``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runtimes.cut import cut, input_types, run_candidate, run_reference, tensor_map
from runtimes.errors import ToolkitError

# Relative L2 error a tensor may carry in each precision before it counts as diverging,
# calibrated on the demo model's seeded inputs (2-core Xeon): the benign floor, the largest
# error on any tensor, was 9e-7 for ORT with its optimizations on against off, 2e-6 for
# OpenVINO and OpenCV DNN in fp32, 1.1e-3 for the fp16 file on ORT, 3e-3 for OpenVINO's
# f16, 1.3e-2 for its bf16 and 0.17 for the int8 file on ORT and OpenVINO. Each budget is
# 3 to 50 times its floor.
BUDGETS = {"fp32": 1e-4, "fp16": 1e-2, "f16": 1e-2, "bf16": 6e-2, "int8": 0.5}
JUMP = 2.0  # a tensor's error must be this many times its inputs' to be its own
LOCAL_CHECKS = 3  # the first diverging nodes run alone
CULPRIT_SHARE = 0.25  # a culprit's local error is at least this share of the error at the logits


@dataclass
class TensorStat:
    index: int  # topological index of the node in the reference graph
    node: str
    op: str
    tensor: str
    observable: bool = True
    rel_l2: float | None = None
    max_abs: float | None = None
    cosine: float | None = None
    inherited: float = 0.0  # the largest error among its inputs
    local: float | None = None  # the node alone, fed the reference's inputs
    local_exact: float | None = None  # int8: the same, fed past its input's quantization
    quantized_input: str | None = None  # int8: the reference tensor its layer reads through Q/DQ
    layer: str = ""  # the candidate's node that computes this tensor (a fused Conv for a Relu's output)
    layer_op: str = ""

    @property
    def jump(self) -> float | None:
        if self.rel_l2 is None:
            return None
        return self.rel_l2 / self.inherited if self.inherited > 0 else math.inf

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "node": self.node, "op": self.op, "tensor": self.tensor,
                "observable": self.observable, "rel_l2": self.rel_l2, "max_abs": self.max_abs,
                "cosine": self.cosine, "inherited": self.inherited,
                "jump": None if self.jump in (None, math.inf) else self.jump, "local": self.local,
                "local_exact": self.local_exact,
                "layer": self.layer, "layer_op": self.layer_op}


@dataclass
class Located:
    mode: str
    budget: float
    stats: list[TensorStat]
    verdict: dict[str, Any]
    reduced: bytes | None = None  # the smallest failing model, serialized
    reduced_inputs: dict[str, np.ndarray] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    logits_rel_l2: float | None = None  # the candidate's logits as it runs unmarked


def compare(ref: np.ndarray, out: np.ndarray) -> tuple[float, float, float]:
    """(relative L2, max |d|, cosine) of ``out`` against ``ref``."""
    r = np.asarray(ref, np.float64).ravel()
    o = np.asarray(out, np.float64).ravel()
    if r.shape != o.shape:
        return math.inf, math.inf, 0.0
    if not np.isfinite(o).all():
        return math.inf, math.inf, 0.0
    d = o - r
    norm = float(np.linalg.norm(r))
    rel = float(np.linalg.norm(d)) / norm if norm > 0 else float(np.linalg.norm(d))
    cos = float(r @ o / (norm * np.linalg.norm(o))) if norm > 0 and np.linalg.norm(o) > 0 else 1.0
    return rel, float(np.abs(d).max()) if d.size else 0.0, cos


# --- locating --------------------------------------------------------------------------------


def locate(reference_model, candidate_model, provider: str, precision: str, x: np.ndarray, *, mode: str = "auto",
           options: dict[str, Any] | None = None, logits: np.ndarray | None = None) -> Located:
    """Find where ``candidate_model`` on ``provider`` leaves ``reference_model`` for the input batch ``x``;
    ``logits`` are the candidate's own, as it runs unmarked (None: it could not run)."""
    options = options or {}
    budget = BUDGETS[precision]
    ref_nodes = list(reference_model.graph.node)
    ref_names = [out for node in ref_nodes for out in node.output]
    input_name = reference_model.graph.input[0].name
    feeds = {input_name: x.astype(np.float32)}
    ref = run_reference(reference_model, feeds, ref_names)
    final = reference_model.graph.output[0].name
    final_rel = compare(ref[final], logits)[0] if logits is not None else None
    mapping = tensor_map(candidate_model, set(ref_names))
    by_ref: dict[str, str] = {}
    for c, r in mapping.items():  # an int8 tensor's DequantizeLinear output: what the next layer reads
        if r not in by_ref or c != r:
            by_ref[r] = c
    notes: list[str] = []
    if mode == "auto":
        mode = "bisect" if provider == "opencv" else "mark-all"
    stats = [TensorStat(i, node.name, node.op_type, out, observable=out in by_ref)
             for i, node in enumerate(ref_nodes) for out in node.output]
    producers = {out: node for node in candidate_model.graph.node for out in node.output}
    for s in stats:  # the layer is what computes the tensor, not the DequantizeLinear after it
        layer = producers.get(s.tensor) or producers.get(by_ref.get(s.tensor, ""))
        s.layer, s.layer_op = (layer.name, layer.op_type) if layer is not None else ("", "")
    if mode == "mark-all":
        names = [by_ref[s.tensor] for s in stats if s.observable]
        got = run_candidate(provider, candidate_model, feeds, names, options, _shapes(ref, by_ref))
        marked_final = compare(ref[final], got[by_ref[final]])[0] if final in by_ref else None
        if final_rel is not None and final_rel > budget and marked_final is not None and marked_final <= budget:
            notes.append(f"marking every tensor as an output made the candidate pass ({marked_final:.2e} at the "
                         f"logits, {final_rel:.2e} without): the runtime fuses differently; switched to bisect")
            mode = "bisect"
        else:
            for s in stats:
                if s.observable:
                    s.rel_l2, s.max_abs, s.cosine = compare(ref[s.tensor], got[by_ref[s.tensor]])
    if mode == "bisect":
        failures = _bisect(stats, ref_nodes, ref, by_ref, candidate_model, provider, feeds, options, budget)
        if failures:
            notes.append(f"{len(failures)} cut graphs could not run on {provider}, so their tensors are not "
                         f"observable: {failures[0]}")
    _inherit(stats, ref_nodes)
    diverging = [s for s in stats if s.rel_l2 is not None and s.rel_l2 > budget and s.rel_l2 > JUMP * s.inherited]
    located = Located(mode, budget, stats, {}, notes=notes, logits_rel_l2=final_rel)
    for s in diverging[:LOCAL_CHECKS]:
        s.local, model, inputs = _local(s, candidate_model, by_ref, {**feeds, **ref}, provider, options)
        if located.reduced is None and s.local is not None and s.local > budget:
            located.reduced, located.reduced_inputs = model, inputs
        if precision == "int8" and s.local is not None and s.local > budget:
            s.local_exact = _local(s, candidate_model, by_ref, {**feeds, **ref}, provider, options, exact=True)[0]
            layer = next((n for n in candidate_model.graph.node if n.name == s.layer), None)
            reads = [_quantized_activation(name, producers) for name in (layer.input if layer is not None else [])]
            s.quantized_input = next((r for r in reads if r is not None), None)
    located.verdict = _verdict(stats, diverging, budget, precision, final_rel, reference_model)
    return located


def _bisect(stats, ref_nodes, ref, by_ref, candidate_model, provider, feeds, options, budget) -> list[str]:
    """Fill in the stats of the tensors probed on the way to the first index whose frontier
    diverges; returns why the probes the runtime could not run failed."""
    consumers: dict[str, int] = {}
    for i, node in enumerate(ref_nodes):
        for name in node.input:
            consumers[name] = max(consumers.get(name, -1), i)
    final = ref_nodes[-1].output[0]
    by_tensor = {s.tensor: s for s in stats}

    def frontier(k: int) -> list[str]:
        produced = [out for node in ref_nodes[: k + 1] for out in node.output]
        return [t for t in produced if (consumers.get(t, -1) > k or t == final) and t in by_ref]

    def probe(t: str) -> None:
        s = by_tensor[t]
        if s.rel_l2 is not None or not s.observable:
            return
        try:
            got = run_candidate(provider, candidate_model, feeds, [by_ref[t]], options, _shapes(ref, by_ref))
        except ToolkitError as exc:  # a cut this runtime cannot run: that tensor is not observable here
            s.observable = False
            failures.append(str(exc))
            return
        s.rel_l2, s.max_abs, s.cosine = compare(ref[t], got[by_ref[t]])

    def diverges(k: int) -> bool:
        for t in frontier(k):
            probe(t)
        return any(by_tensor[t].rel_l2 is not None and by_tensor[t].rel_l2 > budget for t in frontier(k))

    failures: list[str] = []

    low, high = 0, len(ref_nodes) - 1
    if not diverges(high):
        return failures
    while low < high:
        middle = (low + high) // 2
        if diverges(middle):
            high = middle
        else:
            low = middle + 1
    for out in ref_nodes[low].output:  # the first failing index itself, even when nothing later reads it
        if out in by_ref:
            probe(out)
    return failures


def _shapes(ref: dict[str, np.ndarray], by_ref: dict[str, str]) -> dict[str, tuple]:
    """Each candidate tensor's shape: its reference tensor's."""
    return {c: ref[r].shape for r, c in by_ref.items() if r in ref}


def _inherit(stats: list[TensorStat], ref_nodes) -> None:
    """Each tensor's inherited error: the largest among its node's inputs, passed through
    tensors that were not observed."""
    effective: dict[str, float] = {}
    by_tensor = {s.tensor: s for s in stats}
    for node in ref_nodes:
        inherited = max((effective.get(name, 0.0) for name in node.input), default=0.0)
        for out in node.output:
            s = by_tensor[out]
            s.inherited = inherited
            effective[out] = s.rel_l2 if s.rel_l2 is not None else inherited


def _local(s: TensorStat, candidate_model, by_ref, ref, provider, options, exact: bool = False):
    """The candidate's node for ``s`` alone, on the candidate runtime, fed the reference's
    inputs (``ref``: every reference tensor and the graph input): (its relative L2 error,
    that model serialized, its inputs). ``exact``: fed past the QuantizeLinear of each
    activation it reads, so only its own int8 weights count."""
    cand_out = by_ref[s.tensor]
    producers = {out: node for node in candidate_model.graph.node for out in node.output}
    initializers = {i.name for i in candidate_model.graph.initializer}
    feeds: dict[str, np.ndarray] = {}
    todo = list(producers[cand_out].input) if cand_out in producers else []
    seen = set()
    while todo:
        name = todo.pop()
        if not name or name in seen or name in initializers:
            continue
        seen.add(name)
        source = _quantized_activation(name, producers)
        if exact and source is not None and source in ref:
            feeds[name] = ref[source]
        elif name in ref and name != s.tensor and name in producers and \
                producers[name].op_type not in ("QuantizeLinear", "DequantizeLinear", "Cast"):
            feeds[name] = ref[name]
        elif name in producers:
            todo += list(producers[name].input)
        elif name in ref:  # the graph's input
            feeds[name] = ref[name]
    if not feeds:
        return None, None, {}
    try:
        shapes = {cand_out: ref[s.tensor].shape}
        part = cut(candidate_model, feeds, [cand_out], shapes)
        got = run_candidate(provider, part, feeds, [cand_out], options, shapes)
    except ToolkitError:
        return None, None, {}
    types = input_types(part)
    return compare(ref[s.tensor], got[cand_out])[0], part.SerializeToString(), {
        k: v.astype(types.get(k, v.dtype)) for k, v in feeds.items()}


def _quantized_activation(name: str, producers: dict) -> str | None:
    """The fp32 tensor that ``name`` is the DequantizeLinear(QuantizeLinear(...)) of, if it is one."""
    dq = producers.get(name)
    if dq is None or dq.op_type != "DequantizeLinear":
        return None
    q = producers.get(dq.input[0])
    return q.input[0] if q is not None and q.op_type == "QuantizeLinear" else None


# Activations int8 folds into the tensor's range (ONNX Runtime's quantizer drops them): a
# tensor's unit reaches back through them to the layer that computes it.
_FOLDED = ("Relu", "Clip")


def tensor_unit(model, tensor: str) -> list[str]:
    """The nodes that must stay in fp32 for ``tensor`` to stay fp32 in an int8 model: the
    layer that computes it, the activations between, and every node that reads it."""
    producers = {out: node for node in model.graph.node for out in node.output}
    unit: list[str] = []
    node = producers.get(tensor)
    while node is not None:
        unit.insert(0, node.name)
        if node.op_type not in _FOLDED:
            break
        node = producers.get(node.input[0])
    readers = {tensor}
    for n in model.graph.node:  # what reads the tensor, or the activation's output made from it
        if any(i in readers for i in n.input):
            if n.op_type in _FOLDED:
                readers.add(n.output[0])
                unit.append(n.name)
            else:
                unit.append(n.name)
    return list(dict.fromkeys(u for u in unit if u))


def _verdict(stats: list[TensorStat], diverging: list[TensorStat], budget: float, precision: str,
             final_rel: float | None, reference_model=None) -> dict[str, Any]:
    observed = [s for s in stats if s.rel_l2 is not None]
    at_logits = final_rel if final_rel is not None else (observed[-1].rel_l2 if observed else 0.0)
    growth = [[s.index, s.tensor, round(s.rel_l2, 6)] for s in observed]
    culprit = next((s for s in diverging if s.local is not None and s.local > budget
                    and s.local >= CULPRIT_SHARE * min(at_logits, max(x.rel_l2 for x in observed))), None)
    if culprit is not None:
        found = {"kind": "culprit", "node": culprit.layer or culprit.node, "op": culprit.layer_op or culprit.op,
                 "tensor": culprit.tensor, "index": culprit.index, "reference_node": culprit.node,
                 "rel_l2": culprit.rel_l2, "local": culprit.local, "local_exact": culprit.local_exact,
                 "inherited": culprit.inherited, "fault": "layer", "keep_fp32": [culprit.layer or culprit.node]}
        if culprit.local_exact is not None and culprit.local_exact <= budget and culprit.quantized_input \
                and reference_model is not None:
            found.update(fault="input", input_tensor=culprit.quantized_input,
                         keep_fp32=tensor_unit(reference_model, culprit.quantized_input))
        found["cause"], found["suggestion"] = _cause(found, precision), _suggestion(found, precision)
        return found
    steps = [s for s in observed if math.isfinite(s.rel_l2)]
    step = max(steps, key=lambda s: s.rel_l2 - s.inherited, default=None)  # where the most error is added
    most = None if step is None else {"node": step.layer or step.node, "op": step.layer_op or step.op,
                                      "tensor": step.tensor, "rel_l2": step.rel_l2, "inherited": step.inherited}
    if at_logits is not None and at_logits > budget:
        first = diverging[0] if diverging else next((s for s in observed if s.rel_l2 > budget), None)
        return {"kind": "accumulated", "first_over_budget": first.tensor if first else None,
                "logits_rel_l2": at_logits, "growth": growth, "most_divergent": most,
                "cause": f"{precision} rounding error accumulated over the layers: no single layer is wrong"}
    return {"kind": "none", "logits_rel_l2": at_logits, "growth": growth, "most_divergent": most}


def _cause(found: dict[str, Any], precision: str) -> str:
    op = found["op"]
    if precision == "int8" and found["fault"] == "input":
        return (f"the int8 range of its input {found['input_tensor']} loses it: this {op} is right "
                f"({found['local_exact']:.2e}) when fed that tensor in fp32; one channel far wider than the others "
                "leaves them a few int8 levels")
    if precision == "int8":
        return f"this {op} computes wrongly in int8 on its own: a broken scale, or a layer int8 cannot represent"
    if precision == "fp32":
        return f"the runtime computes this {op} differently from ONNX in fp32: a kernel bug, or a changed weight"
    return f"this {op} loses too much in {precision} on its own"


def _suggestion(found: dict[str, Any], precision: str) -> str | None:
    if precision == "int8" and found["fault"] == "input":
        return ("let quantize equalize or re-range it: python -m converters.quantize --precision int8 --repair; "
                f"or keep the tensor in fp32: --keep-fp32 {','.join(['classifier', *found['keep_fp32']])}")
    if precision == "int8" and found["op"] in ("Conv", "Gemm", "MatMul"):
        return f"keep it in fp32: python -m converters.quantize --precision int8 --keep-fp32 classifier,{found['node']}"
    if precision in ("bf16", "f16", "fp16"):
        return "run this model in fp32 on this runtime, or keep this layer in fp32"
    return None


def verdict_line(verdict: dict[str, Any], precision: str, provider: str) -> str:
    """One line: the first divergence and its likely cause."""
    if verdict["kind"] == "culprit":
        return (f"culprit: {verdict['op']} {verdict['node']} (output {verdict['tensor']}, topological index "
                f"{verdict['index']}) diverges on {provider} {precision}: relative L2 {verdict['rel_l2']:.2e} there, "
                f"{verdict['local']:.2e} run alone on the reference's inputs, {verdict['inherited']:.2e} in its "
                f"inputs; {verdict['cause']}")
    most = verdict.get("most_divergent")
    step = (f"; the largest step is {most['op']} {most['node']} ({most['inherited']:.2e} in, {most['rel_l2']:.2e} out)"
            if most else "")
    if verdict["kind"] == "accumulated":
        return (f"accumulated error, no single culprit: {provider} {precision} reaches relative L2 "
                f"{verdict['logits_rel_l2']:.2e} at the logits, growing layer by layer from "
                f"{verdict['first_over_budget']}{step}")
    return (f"no divergence beyond the {precision} budget on {provider}: relative L2 {verdict['logits_rel_l2']:.2e} "
            f"at the logits{step}")
