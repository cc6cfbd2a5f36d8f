"""Named parity tolerances per precision: ``|onnx - torch| <= atol + rtol * |torch|``.

The converter's parity gate and the runtime parity tests both use these; no test
types its own literals.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float


FP32 = Tolerance(atol=1e-4, rtol=1e-3)
FP16 = Tolerance(atol=1e-2, rtol=1e-2)

BY_PRECISION = {"fp32": FP32, "fp16": FP16}


def for_precision(precision: str) -> Tolerance:
    """The tolerance for ``precision`` ("fp32" or "fp16")."""
    try:
        return BY_PRECISION[precision]
    except KeyError:
        raise ValueError(f"unknown precision {precision!r}; known: {', '.join(BY_PRECISION)}") from None
