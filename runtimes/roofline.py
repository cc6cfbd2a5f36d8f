"""The hardware limit for a model: FLOPs counted in the graph over the measured fp32
GEMM peak of these cores, at the thread count the runtime uses.

No runtime can classify an image faster than ``flops / peak``; a benchmark row's
share of that bound says how much of the machine the runtime actually uses.
"""

from __future__ import annotations

import collections
import importlib.util
import math
import time
from pathlib import Path

from runtimes.graph import FLOAT, Node, Tensor, model_bytes, read_graph

# Square fp32 matrix sizes tried; the best counts. On a 2-core Zen 4, 512 gave the
# most (221 GFLOP/s), 1024 about 15% less: big enough for MLAS's peak, small enough for cache.
GEMM_SIZES = (256, 512, 768)


class LimitUnavailable(Exception):
    """Why the hardware limit cannot be worked out here: a graph whose layer sizes cannot be
    followed, or no ONNX Runtime to measure the peak with. ``runtimes.bench`` prints it as a note."""


# Ops whose output has the height and width of their inputs (elementwise ones broadcast
# them; Concat and Split keep them unless they join along a spatial axis). Any other op,
# Transpose or Resize say, loses the size, and a Conv after it cannot be counted.
SAME_SIZE = frozenset(
    "Abs Add BatchNormalization Cast Clip Concat DequantizeLinear Div Dropout Elu Erf Exp Gelu HardSigmoid HardSwish "
    "Identity InstanceNormalization LRN LeakyRelu Log Max Mean Min Mish Mul Neg PRelu Pow QuantizeLinear Reciprocal "
    "Relu Selu Sigmoid Softmax Softplus Split Sqrt Sub Sum Tanh".split()
)
WINDOWED = frozenset({"Conv", "MaxPool", "AveragePool", "LpPool"})
GLOBAL_POOLS = frozenset({"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"})
# A weight passed through these keeps its dims: int8 models dequantize their weights, fp16 ones may cast them.
WEIGHT_PASSING = frozenset({"DequantizeLinear", "Cast", "Identity"})


def model_flops(path: str | Path) -> int:
    """FLOPs of one image through ``path``: 2 x multiply-adds of every Conv, Gemm and MatMul.

    Read with ``runtimes.graph`` (a device has no ``onnx`` package): each Conv's output
    height and width are followed from the graph's input through the windowed and
    size-keeping ops. Raises LimitUnavailable naming the first Conv it cannot size, or
    when there is nothing to count.
    """
    graph = read_graph(path)
    weights = dict(graph.initializers)
    sizes = {t.name: tuple(t.dims[2:]) for t in graph.io.inputs if t.dims and all(isinstance(d, int) and d > 0 for d in t.dims[2:])}
    total = 0
    for node in _in_order(graph.nodes):
        if node.op_type in WEIGHT_PASSING and node.inputs and node.inputs[0] in weights:
            weights[node.outputs[0]] = weights[node.inputs[0]]
        size = _output_size(node, sizes, weights)
        if size is not None:
            sizes.update(dict.fromkeys(node.outputs, size))
        if node.op_type == "Conv":
            if size is None:
                raise LimitUnavailable(
                    f"{path}: cannot size Conv {node.outputs[0]!r} from the graph (a free image size, an op "
                    "on the way that changes it, or weights that are not in the file)"
                )
            total += 2 * math.prod(size) * math.prod(weights[node.inputs[1]])  # per output: C_in/groups x kH x kW
        elif node.op_type in ("Gemm", "MatMul") and len(node.inputs) > 1 and node.inputs[1] in weights:
            total += 2 * math.prod(weights[node.inputs[1]])
    if total == 0:
        raise LimitUnavailable(f"{path} has no Conv, Gemm or MatMul with weights in the graph to count")
    return total


def _in_order(nodes: tuple[Node, ...]) -> list[Node]:
    """``nodes`` sorted so each comes after the nodes that make its inputs (Kahn's algorithm).
    ONNX asks files to be in that order, but ONNX Runtime's fp16 converter appends the
    input's Cast at the end."""
    producer = {name: i for i, node in enumerate(nodes) for name in node.outputs}
    waiting = [{producer[name] for name in node.inputs if name in producer} for node in nodes]
    consumers: dict[int, list[int]] = {}
    for i, needs in enumerate(waiting):
        for j in needs:
            consumers.setdefault(j, []).append(i)
    ready = collections.deque(i for i, needs in enumerate(waiting) if not needs)
    ordered = []
    while ready:
        i = ready.popleft()
        ordered.append(nodes[i])
        for j in consumers.get(i, ()):
            waiting[j].discard(i)
            if not waiting[j]:
                ready.append(j)
    return ordered


def _output_size(node: Node, sizes: dict[str, tuple[int, ...]], weights: dict[str, tuple[int, ...]]) -> tuple[int, ...] | None:
    """The spatial dims (after N and C) of ``node``'s output, or None where they cannot be followed."""
    known = [sizes[name] for name in node.inputs if name in sizes]
    if not known:
        return None
    if node.op_type in GLOBAL_POOLS:
        return (1,) * len(known[0])
    if node.op_type in WINDOWED:
        if node.op_type == "Conv" and node.inputs[1] not in weights:
            return None
        kernel = node.attributes.get("kernel_shape") or weights[node.inputs[1]][2:]
        return _windowed(sizes.get(node.inputs[0]), kernel, node.attributes)
    if node.op_type not in SAME_SIZE:
        return None
    rank = 2 + len(known[0])
    if node.op_type in ("Concat", "Split") and node.attributes.get("axis", 0) % rank >= 2:
        return None
    return tuple(max(dims) for dims in zip(*known))  # broadcasting: a 1 meets the size


def _windowed(size: tuple[int, ...] | None, kernel: tuple[int, ...], attributes: dict) -> tuple[int, ...] | None:
    """Output size of a Conv or pooling window, as ONNX Runtime computes it."""
    if size is None or len(kernel) != len(size):
        return None
    n = len(size)
    strides = attributes.get("strides") or (1,) * n
    dilations = attributes.get("dilations") or (1,) * n
    pads = attributes.get("pads") or (0,) * 2 * n
    auto_pad = attributes.get("auto_pad", "NOTSET")
    out = []
    for i in range(n):
        extent = dilations[i] * (kernel[i] - 1) + 1
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            out.append(-(-size[i] // strides[i]))
            continue
        begin, end = (0, 0) if auto_pad == "VALID" else (pads[i], pads[i + n])
        span = size[i] + begin + end - extent
        if attributes.get("ceil_mode"):
            steps = -(-span // strides[i])
            # The last window must start inside the input or its leading pad (ONNX Runtime
            # and PyTorch; onnx's own shape inference counts one more).
            steps -= steps * strides[i] >= size[i] + begin
            out.append(steps + 1)
        else:
            out.append(span // strides[i] + 1)
    return tuple(out)


def gemm_peak_gflops(threads: int, seconds: float = 2.0) -> float:
    """Measured fp32 GFLOP/s of ONNX Runtime's MatMul (MLAS) on ``threads`` threads: the
    fastest single call over a few sizes, ``seconds`` in all."""
    if importlib.util.find_spec("onnxruntime") is None:
        raise LimitUnavailable("onnxruntime is not installed here, and its MatMul is the measured peak")
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    rng = np.random.default_rng(0)
    peak = 0.0
    for n in GEMM_SIZES:
        model = model_bytes(
            [("MatMul", ["a", "b"], ["c"])],
            [Tensor(x, FLOAT, (n, n)) for x in ("a", "b")],
            [Tensor("c", FLOAT, (n, n))],
        )
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        feeds = {"a": rng.standard_normal((n, n), dtype=np.float32), "b": rng.standard_normal((n, n), dtype=np.float32)}
        session.run(None, feeds)
        best, deadline = float("inf"), time.perf_counter() + seconds / len(GEMM_SIZES)
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            session.run(None, feeds)
            best = min(best, time.perf_counter() - started)
        peak = max(peak, 2 * n**3 / best / 1e9)
    return peak
