"""Parity gate: ONNX Runtime CPU logits against PyTorch eval logits.

Elementwise ``|d| <= atol + rtol * |ref|`` with the named tolerances of
``runtimes.tolerances``; top-1 must agree on every row and the top-5 sets must agree,
except where the reference itself has a tie within tolerance at the boundary.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from runtimes.errors import ParityError
from runtimes.tolerances import FP32, Tolerance


@dataclass(frozen=True)
class ParityStats:
    """Per-output statistics for one batch."""

    batch: int
    max_abs: float
    mean_abs: float
    max_rel: float
    min_passing_atol: float  # the smallest atol that would have passed with this rtol
    violations: int  # elements outside atol + rtol * |ref|
    top1_agreement: float
    top5_agreement: float
    top1_ok: bool
    top5_ok: bool
    atol: float
    rtol: float

    @property
    def passed(self) -> bool:
        return self.violations == 0 and self.top1_ok and self.top5_ok

    def as_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}

    def summary(self) -> str:
        return (
            f"batch {self.batch}: max_abs={self.max_abs:.3g} mean_abs={self.mean_abs:.3g} "
            f"max_rel={self.max_rel:.3g} min_atol={self.min_passing_atol:.3g} "
            f"violations={self.violations} top1={self.top1_agreement:.0%} top5={self.top5_agreement:.0%}"
        )


def _topk_ok(ref: np.ndarray, out: np.ndarray, k: int, slack: np.ndarray) -> tuple[float, bool]:
    """Fraction of rows whose top-k sets agree; ok if every disagreeing row is a reference tie."""
    k = min(k, ref.shape[1])
    order = np.argsort(-ref, axis=1)
    ref_sets = order[:, :k]
    out_sets = np.argsort(-out, axis=1)[:, :k]
    same = np.array([set(a) == set(b) for a, b in zip(ref_sets, out_sets)])
    if k == ref.shape[1]:
        return float(same.mean()), True
    rows = np.arange(ref.shape[0])
    gap = ref[rows, order[:, k - 1]] - ref[rows, order[:, k]]
    # Within 2x the allowed error, the reference order is not determined by the graph.
    tie = gap <= 2 * slack[rows, order[:, k - 1]]
    return float(same.mean()), bool(np.all(same | tie))


def compare(ref: np.ndarray, out: np.ndarray, tol: Tolerance = FP32) -> ParityStats:
    """Statistics of ``out`` against reference logits ``ref`` (both N x C)."""
    ref = np.asarray(ref, dtype=np.float64)
    out = np.asarray(out, dtype=np.float64)
    if ref.shape != out.shape:
        raise ParityError(f"output shape {out.shape} differs from the PyTorch reference {ref.shape}")
    diff = np.abs(out - ref)
    slack = tol.atol + tol.rtol * np.abs(ref)
    top1, top1_ok = _topk_ok(ref, out, 1, slack)
    top5, top5_ok = _topk_ok(ref, out, 5, slack)
    finite = bool(np.isfinite(out).all())
    return ParityStats(
        batch=ref.shape[0],
        max_abs=float(diff.max()) if finite else float("inf"),
        mean_abs=float(diff.mean()) if finite else float("inf"),
        max_rel=float((diff / np.maximum(np.abs(ref), 1e-12)).max()) if finite else float("inf"),
        min_passing_atol=float(np.max(np.maximum(diff - tol.rtol * np.abs(ref), 0.0))) if finite else float("inf"),
        violations=int(np.count_nonzero(~(diff <= slack))),  # NaN counts as a violation
        top1_agreement=top1,
        top5_agreement=top5,
        top1_ok=top1_ok and finite,
        top5_ok=top5_ok and finite,
        atol=tol.atol,
        rtol=tol.rtol,
    )


def seeded_inputs(batch: int, size: int, seed: int) -> np.ndarray:
    """Normal noise shaped like ImageNet-normalized images; the same for a given seed."""
    gen = torch.Generator().manual_seed(seed + batch)
    return torch.randn(batch, 3, size, size, generator=gen).numpy()


def check_parity(
    model: torch.nn.Module,
    onnx_model: bytes,
    batches: tuple[int, ...] = (1, 4),  # batch 4 exercises the dynamic axis
    size: int = 224,
    seed: int = 0,
    tol: Tolerance = FP32,
) -> list[ParityStats]:
    """Run both on the same seeded inputs; raise ParityError naming every failing batch."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(onnx_model, options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    stats = []
    for batch in batches:
        x = seeded_inputs(batch, size, seed)
        with torch.inference_mode():
            ref = model(torch.from_numpy(x)).numpy()
        out = session.run(None, {input_name: x})[0]
        stats.append(compare(ref, out, tol))
    failed = [s for s in stats if not s.passed]
    if failed:
        raise ParityError(
            f"ONNX Runtime disagrees with PyTorch beyond atol={tol.atol} rtol={tol.rtol}: "
            + "; ".join(s.summary() for s in failed),
            stats,
        )
    return stats
