"""Test-only runners for the tuner, registered through the registry by the tests that use them.

Each wraps the real ONNX Runtime CPU runner and answers from a cache after the first call
with a given input, so it is by far the fastest candidate. What it answers is wrong in one
chosen way, set by the test through class attributes (one process, one test at a time).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from runtimes.adapters.cpu import CpuRunner


class FastWrongRunner(CpuRunner):
    """``mode``: "push" lifts the lowest logit of ``target`` rows to the top; "swap" swaps the two
    highest logits of ``target`` rows; "nan" puts a NaN in the output of call number
    ``nan_call`` (counted from the first call after load, warm-up included) and every call
    after it, so it shows whether in the gate or in a timed call."""

    name = "fastwrong"
    mode = "push"
    target: bytes = b""  # the float32 bytes of one preprocessed reference image
    nan_call = 3

    def _load_impl(self) -> None:
        super()._load_impl()
        self._cache: dict[str, Any] = {}
        self._calls = 0

    def _infer_impl(self, batch: Any) -> Any:
        self._calls += 1
        key = hashlib.sha256(batch.tobytes()).hexdigest()
        if key not in self._cache:
            self._cache[key] = self._sabotage(batch, super()._infer_impl(batch))
        out = self._cache[key].copy()
        if self.mode == "nan" and self._calls >= self.nan_call:
            out[0, 0] = np.nan
        return out

    def _sabotage(self, batch: Any, logits: Any) -> Any:
        logits = logits.copy()
        for row, image in enumerate(batch):
            if self.mode in ("push", "swap") and image.tobytes() == self.target:
                order = np.argsort(logits[row])
                if self.mode == "push":
                    logits[row, order[0]] = logits[row, order[-1]] + 5.0
                else:
                    logits[row, [order[-1], order[-2]]] = logits[row, [order[-2], order[-1]]]
        return logits
