"""Parity gate: ONNX Runtime CPU logits against PyTorch eval logits on seeded inputs.

The statistics and the pass rule live in :mod:`runtimes.parity` (numpy only), so a
device replaying the kept inputs judges exactly as this gate did.
"""

from __future__ import annotations

import numpy as np
import torch

from runtimes.errors import ParityError
from runtimes.parity import ParityStats, compare
from runtimes.tolerances import FP32, Tolerance

__all__ = ["ParityStats", "check_parity", "compare", "seeded_inputs", "torch_logits"]


def seeded_inputs(batch: int, size: int, seed: int) -> np.ndarray:
    """Normal noise shaped like ImageNet-normalized images; the same for a given seed.

    Rounded to float16 values, so the reference file stores them in half the bytes, exactly.
    """
    gen = torch.Generator().manual_seed(seed + batch)
    return torch.randn(batch, 3, size, size, generator=gen).half().float().numpy()


def torch_logits(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """Eval-mode logits of ``model`` for a float32 NCHW batch."""
    with torch.inference_mode():
        return model(torch.from_numpy(np.ascontiguousarray(x))).numpy()


def check_parity(
    model: torch.nn.Module | None,
    onnx_model: bytes,
    batches: tuple[int, ...] = (1, 4),  # batch 4 exercises the dynamic axis
    size: int = 224,
    seed: int = 0,
    tol: Tolerance = FP32,
    cases: list[tuple[np.ndarray, np.ndarray]] | None = None,
) -> list[ParityStats]:
    """Run both on the same seeded inputs; raise ParityError naming every failing batch.

    ``cases`` are (inputs, PyTorch logits) pairs already computed; by default they are
    made from ``model`` for each of ``batches``.
    """
    import onnxruntime as ort

    if cases is None:
        cases = [(x, torch_logits(model, x)) for x in (seeded_inputs(b, size, seed) for b in batches)]
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(onnx_model, options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    stats = [compare(ref, session.run(None, {input_name: x})[0], tol) for x, ref in cases]
    failed = [s for s in stats if not s.passed]
    if failed:
        raise ParityError(
            f"ONNX Runtime disagrees with PyTorch beyond atol={tol.atol} rtol={tol.rtol}: "
            + "; ".join(s.summary() for s in failed),
            stats,
        )
    return stats
