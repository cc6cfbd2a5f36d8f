"""The gate a precision variant passes before ``converters.quantize`` writes it. Torch-free.

The rule is ``runtimes.verify``'s, on every target runtime named (default: ONNX Runtime
CPU), for the variant's own precision (``runtimes.tolerances``):

- PyTorch's answers recorded beside the fp32 model (``<stem>.reference.npz``): its seeded
  batches and reference images, replayed on the target (``runtimes.reference.replay``);
- the calibration (or check) images: the variant's logits against the fp32 model's on
  ONNX Runtime CPU, under the same tolerance. For int8 that is top-1 agreement; the
  reference holds only a few images, the calibration set a few hundred.

A target that cannot load the variant fails the gate with the runtime's own message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtimes.errors import ToolkitError

BATCH = 8  # images per call: within every runner's default batch range


@dataclass
class Figure:
    """One judged check: what was compared, its figure and what it needed."""

    name: str  # "18 reference images", "200 calibration images", "seeded batch 4"
    passed: bool
    top1: float
    max_abs: float
    rule: str  # "top-1 >= 97%", "atol 0.05, rtol 0.01"

    def text(self) -> str:
        if self.rule.startswith("top-1 "):
            return f"top-1 {self.top1:.1%} on the {self.name} (needs {self.rule.removeprefix('top-1 ')})"
        return f"max |d| {self.max_abs:.2e} on the {self.name} (needs {self.rule})"


@dataclass
class TargetResult:
    target: str
    figures: list[Figure] = field(default_factory=list)
    error: str | None = None  # the variant would not load or run here
    runs_on: list[str] = field(default_factory=list)
    logits: np.ndarray | None = field(default=None, repr=False)  # on the judged images, for the locator

    @property
    def passed(self) -> bool:
        return self.error is None and all(f.passed for f in self.figures)

    def line(self) -> str:
        if self.error is not None:
            return f"{self.target}: does not run ({self.error})"
        shown = [f for f in self.figures if not f.passed] or self.figures
        return f"{self.target}: " + "; ".join(f.text() for f in shown)

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "passed": self.passed, "error": self.error, "runs_on": self.runs_on,
                "figures": [vars(f) for f in self.figures]}


@dataclass
class GateResult:
    precision: str
    targets: list[TargetResult]
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(t.passed for t in self.targets)

    def summary(self) -> str:
        """The failing targets' figures (all targets' when it passed), one line."""
        shown = [t for t in self.targets if not t.passed] or self.targets
        return " | ".join(t.line() for t in shown)

    def worst_top1(self) -> float:
        """The lowest top-1 figure over every target and check: how far a failing variant got."""
        return min((f.top1 for t in self.targets for f in t.figures), default=0.0)

    def as_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "passed": self.passed, "notes": self.notes,
                "targets": [t.as_dict() for t in self.targets]}


def _rule(tol) -> str:
    return f"atol {tol.atol:g}, rtol {tol.rtol:g}" if tol.elementwise else f"top-1 >= {tol.min_top1:.0%}"


class Gate:
    """Judges variants of one fp32 model on ``targets``, against its reference answers (if
    beside it) and its own logits on ``inputs`` (computed once, on ONNX Runtime CPU)."""

    def __init__(self, fp32_model: Path, spec, inputs: np.ndarray, what: str, targets: list[str]) -> None:
        from runtimes.errors import BundleError
        from runtimes.reference import Reference, reference_for

        self.inputs, self.what, self.targets, self.notes = inputs, what, targets, []
        self.expected = logits("cpu", fp32_model, spec, inputs)
        try:
            self.reference = Reference.load(reference_for(fp32_model, spec))
        except BundleError as exc:
            self.reference = None
            self.notes.append(f"judged on the {what} images alone: {exc}")

    def judge(self, variant: Path, spec) -> GateResult:
        return GateResult(spec.precision, [self._on(target, variant, spec) for target in self.targets], list(self.notes))

    def _on(self, target: str, variant: Path, spec) -> TargetResult:
        from runtimes.adapters import create_runner
        from runtimes.parity import compare
        from runtimes.reference import replay
        from runtimes.tolerances import for_precision

        tol = for_precision(spec.precision)
        result = TargetResult(target)
        try:
            with create_runner(target, variant, spec, batch_size=BATCH) as runner:
                result.runs_on = runner.active_providers()
                checks = replay(runner, self.reference, tol) if self.reference is not None else []
                got = _infer_all(runner, self.inputs)
        except ToolkitError as exc:
            result.error = str(exc)
            return result
        except Exception as exc:  # a runtime that compiles the file but fails on it
            result.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            return result
        for check in checks:
            if check.judged:
                name = check.name.replace("images", "reference images") if check.name.endswith("images") else check.name
                result.figures.append(Figure(name, check.stats.passed, check.stats.top1_agreement,
                                             check.stats.max_abs, _rule(tol)))
        result.logits = got
        stats = compare(self.expected, got, tol)
        result.figures.append(Figure(f"{len(self.inputs)} {self.what} images", stats.passed, stats.top1_agreement,
                                     stats.max_abs, _rule(tol)))
        return result


def logits(target: str, model: Path, spec, inputs: np.ndarray) -> np.ndarray:
    """``model``'s logits for ``inputs`` on ``target``, ``BATCH`` at a time."""
    from runtimes.adapters import create_runner

    with create_runner(target, model, spec, batch_size=BATCH) as runner:
        return _infer_all(runner, inputs)


def _infer_all(runner, inputs: np.ndarray) -> np.ndarray:
    return np.concatenate([runner.infer(inputs[i: i + BATCH]) for i in range(0, len(inputs), BATCH)])
