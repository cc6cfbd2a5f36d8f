"""The hardware limit for a model: FLOPs counted in the graph over the measured fp32
GEMM peak of these cores, at the thread count the runtime uses.

No runtime can classify an image faster than ``flops / peak``; a benchmark row's
share of that bound says how much of the machine the runtime actually uses.
"""

from __future__ import annotations

import platform
import re
import time
from pathlib import Path
from typing import Any

# Square fp32 matrix sizes tried; the best counts. On a 2-core Zen 4, 512 gave the
# most (221 GFLOP/s), 1024 about 15% less: big enough for MLAS's peak, small enough for cache.
GEMM_SIZES = (256, 512, 768)


def model_flops(path: str | Path) -> int:
    """FLOPs of one image through ``path``: 2 x multiply-adds of every Conv, Gemm and MatMul."""
    import numpy as np
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    graph = model.graph
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in (*graph.value_info, *graph.output)}
    weights = {i.name: list(i.dims) for i in graph.initializer}
    total = 0
    for node in graph.node:
        if node.op_type == "Conv" and node.input[1] in weights and node.output[0] in shapes:
            out, w = shapes[node.output[0]], weights[node.input[1]]
            total += 2 * int(np.prod(out[1:])) * int(np.prod(w[1:]))  # per output: C_in/groups x kH x kW
        elif node.op_type in ("Gemm", "MatMul") and len(node.input) > 1 and node.input[1] in weights:
            total += 2 * int(np.prod(weights[node.input[1]]))
    return total


def gemm_peak_gflops(threads: int, seconds: float = 2.0) -> float:
    """Measured fp32 GFLOP/s of ONNX Runtime's MatMul (MLAS) on ``threads`` threads: the
    fastest single call over a few sizes, ``seconds`` in all."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    rng = np.random.default_rng(0)
    peak = 0.0
    for n in GEMM_SIZES:
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm",
            [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in ("a", "b")],
            [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        feeds = {"a": rng.standard_normal((n, n), dtype=np.float32), "b": rng.standard_normal((n, n), dtype=np.float32)}
        session.run(None, feeds)
        best, deadline = float("inf"), time.perf_counter() + seconds / len(GEMM_SIZES)
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            session.run(None, feeds)
            best = min(best, time.perf_counter() - started)
        peak = max(peak, 2 * n**3 / best / 1e9)
    return peak


def cpu_info() -> dict[str, Any]:
    """CPU model, the instruction-set flags that matter for inference, and core counts."""
    import os

    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text()
        found = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
        model = found.group(1).strip() if found else model
        found = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
        flags = set(found.group(1).split()) if found else set()
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "avx_vnni")
    from runtimes.adapters.ort_common import physical_cores

    return {
        "model": model,
        "flags": [f for f in wanted if f in flags],
        "logical_cpus": os.cpu_count(),
        "physical_cores": physical_cores(),
    }
