"""Parity statistics of a runtime's logits against reference (PyTorch) logits; numpy only.

Elementwise ``|d| <= atol + rtol * |ref|`` with the named tolerances of
``runtimes.tolerances``; top-1 must agree on every row and the top-5 sets must agree,
except where the reference itself has a tie within tolerance at the boundary. The
exporter's parity gate and ``runtimes.verify`` on a device both judge with this module,
so a device without torch applies exactly the test the export passed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from runtimes.errors import ParityError
from runtimes.tolerances import FP32, Tolerance


@dataclass(frozen=True)
class ParityStats:
    """Statistics of one batch of logits against the reference."""

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
    elementwise: bool = True  # False: judged by top-1 agreement alone (int8)
    min_top1: float = 1.0

    @property
    def passed(self) -> bool:
        if not self.elementwise:
            return self.top1_agreement >= self.min_top1
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
        raise ParityError(f"output shape {out.shape} differs from the reference {ref.shape}")
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
        top1_agreement=top1 if finite else 0.0,
        top5_agreement=top5 if finite else 0.0,
        top1_ok=top1_ok and finite,
        top5_ok=top5_ok and finite,
        atol=tol.atol,
        rtol=tol.rtol,
        elementwise=tol.elementwise,
        min_top1=tol.min_top1,
    )
