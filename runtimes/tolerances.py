"""Named parity tolerances per precision: ``|runtime - torch| <= atol + rtol * |torch|``.

The converter's parity gate, ``runtimes.verify`` on a device and the runtime parity
tests all use these; no test types its own literals.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float
    # int8 moves logits too far for an elementwise bound to mean anything: such a model
    # is judged by the share of rows whose top-1 class equals the reference's.
    elementwise: bool = True
    min_top1: float = 1.0


FP32 = Tolerance(atol=1e-4, rtol=1e-3)
# fp16 weights and activations (ORT CPU, demo model, logits up to 18.7): max |d| 2.8e-2,
# smallest passing atol at rtol 1e-2 was 2.0e-2, top-1 and top-5 100%. 2.5x margin.
FP16 = Tolerance(atol=5e-2, rtol=1e-2)
# OpenVINO's bf16 inference on the fp32 model (AVX512_BF16, demo model): max |d| 0.24,
# smallest passing atol at rtol 1e-2 was 0.17, top-1 and top-5 100%. 2.4x margin.
BF16 = Tolerance(atol=4e-1, rtol=1e-2)
INT8 = Tolerance(atol=float("inf"), rtol=0.0, elementwise=False, min_top1=0.97)

BY_PRECISION = {"fp32": FP32, "fp16": FP16, "bf16": BF16, "int8": INT8}


def for_precision(precision: str) -> Tolerance:
    """The tolerance for ``precision`` ("fp32", "fp16", "bf16" or "int8")."""
    from runtimes.errors import ModelSpecError

    try:
        return BY_PRECISION[precision]
    except KeyError:
        raise ModelSpecError(
            f"no tolerance for precision {precision!r} (known: {', '.join(BY_PRECISION)}); "
            "the model was made by a newer toolkit or its metadata is wrong"
        ) from None
