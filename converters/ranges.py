"""Calibrated ranges for one activation tensor, from its fp32 values: what ``--repair`` tries
on a tensor whose min-max range breaks the layer that reads it. numpy only.

- ``percentile``: the (100 - p)th and pth percentiles; rare extremes are clipped.
- ``entropy``: the clipping threshold whose 8-bit histogram loses the least information
  (the smallest KL divergence from the fp32 histogram), as TensorRT's entropy calibrator
  chooses it.
"""

from __future__ import annotations

import numpy as np

METHODS = ("percentile 99.99", "percentile 99.9", "entropy")
BINS = 8192


def tensor_range(values: np.ndarray, method: str) -> tuple[float, float]:
    """(min, max) for int8 to cover, by ``method`` (one of ``METHODS``); min is at most 0."""
    values = np.asarray(values, np.float64).ravel()
    if method.startswith("percentile "):
        p = float(method.split()[1])
        low, high = np.percentile(values, [100 - p, p])
        return float(min(low, 0.0)), float(max(high, 0.0))
    if method == "entropy":
        if values.min() < 0:  # signed: one threshold for both sides, on the magnitudes
            t = _kl_threshold(np.abs(values), levels=128)
            return -t, t
        return 0.0, _kl_threshold(values, levels=256)
    raise ValueError(f"unknown range method {method!r}; known: {', '.join(METHODS)}")


def _kl_threshold(magnitudes: np.ndarray, levels: int) -> float:
    """The threshold t in (0, max] whose ``levels``-level quantization of the histogram of
    ``magnitudes`` below t (the rest piled into the last bin) is closest to it in KL divergence."""
    top = float(magnitudes.max())
    if top <= 0:
        return 0.0
    hist, edges = np.histogram(magnitudes, bins=BINS, range=(0.0, top))
    hist = hist.astype(np.float64)
    best, threshold = np.inf, top
    for i in range(levels, BINS + 1, 64):
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()
        q = np.zeros(i)
        for chunk in np.array_split(np.arange(i), levels):
            used = chunk[hist[chunk] > 0]
            if len(used):
                q[used] = hist[chunk].sum() / len(used)
        p, q = p / p.sum(), q / max(q.sum(), 1e-12)
        mask = p > 0
        kl = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))
        if kl < best:
            best, threshold = kl, float(edges[i])
    return threshold
