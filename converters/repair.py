"""When an int8 variant fails its gate: find what breaks it and fix it, cheapest fix first,
until a variant passes on every target. Torch-free; ``converters.quantize --repair``.

The steps, each followed by the gate (``converters.gate``), stopping at the first variant
that passes:

1. **Equalize** every Conv -> Relu -> Conv pair (``converters.equalize``): free at run time.
   The equalized fp32 model must first give PyTorch's answers within fp32 tolerance; it
   then stays the base of every later step, unless its int8 variant did worse.
2. **Locate** the first culprit on a failing target (``runtimes.locate``, on calibration
   images the variant gets wrong). Its verdict names either a layer that int8 computes
   wrongly, or a tensor whose int8 range breaks the layer that reads it.
3. For a tensor: **re-range** it from its fp32 values on the calibration images
   (``converters.ranges``: percentiles, then entropy, instead of the extremes), keeping
   the best if it passes or helps.
4. **Keep in fp32** the culprit's unit: the layer, or for a tensor the layer that makes it,
   its activation and its readers. Then locate again, and so on.

The work is bounded by ``budget_s`` (a step is not begun that would end past it, judged
by the same step's last duration) and by ``max_fp32_nodes`` beyond the default ones.
Nothing that misses the gate is ever returned as repaired: the caller exits 3 with the
attempts, each with how far it got.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from converters.gate import Gate, GateResult, logits
from converters.ranges import METHODS as RANGE_METHODS, tensor_range
from runtimes.progress import Progress

LOCATE_IMAGES = 4  # the calibration images the locator runs on: the first the variant gets wrong


@dataclass
class Attempt:
    step: str  # "plain int8", "equalize 19 Conv->Relu->Conv pairs", "keep fp32: ...", "re-range ..."
    gate: GateResult
    seconds: float
    fp32_nodes: list[str] = field(default_factory=list)  # kept in fp32 beyond the default, at this attempt
    found: str = ""  # the locator's line that led to this step

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.step, "passed": self.gate.passed, "worst_top1": self.gate.worst_top1(),
                "summary": self.gate.summary(), "fp32_nodes": self.fp32_nodes, "seconds": round(self.seconds, 1),
                "found": self.found, "gate": self.gate.as_dict()}

    def short(self) -> str:
        return f"{self.step}: {'passed' if self.gate.passed else f'top-1 {self.gate.worst_top1():.1%}'}"


@dataclass
class Repaired:
    passed: bool
    attempts: list[Attempt]
    path: Path | None  # the passing variant, in the work folder
    equalized: dict[str, float]  # pair -> largest channel factor, when equalization was kept
    ranges: dict[str, dict[str, Any]]  # tensor -> {"method": "percentile 99.99", "min": .., "max": ..}
    fp32_nodes: list[str]  # beyond the default
    seconds: float
    stopped: str = ""  # why it stopped without a pass
    speed: dict[str, Any] | None = None

    def record(self) -> dict[str, Any]:
        """What the variant's spec and the JSON report keep."""
        return {"passed": self.passed, "equalized_pairs": sorted(self.equalized),
                "ranges": self.ranges, "fp32_nodes": self.fp32_nodes, "seconds": round(self.seconds, 1),
                "stopped": self.stopped, "speed": self.speed, "attempts": [a.as_dict() for a in self.attempts]}

    def steps(self) -> str:
        """``plain int8: top-1 16.0% -> equalize 19 pairs: passed``."""
        return " -> ".join(a.short() for a in self.attempts)


class Repairer:
    def __init__(self, *, model: Path, spec, inputs: np.ndarray, gate: Gate, method: str, kept: list[str],
                 maker, stamp, work: Path, budget_s: float, max_fp32_nodes: int, progress: Progress) -> None:
        """``maker``: the ``converters.quantize.Int8Maker`` that made the failing variant;
        ``stamp(path)`` writes the variant's spec into a made file, as the gate and the runtimes read it."""
        self.model, self.spec, self.inputs, self.gate = model, spec, inputs, gate
        self.method, self.kept, self.plain_maker, self.stamp = method, kept, maker, stamp
        self.work, self.budget_s, self.max_fp32_nodes, self.progress = work, budget_s, max_fp32_nodes, progress
        self.started = time.monotonic()
        self.count = 0

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def _variant(self, maker, kept_extra: list[str], ranges: dict[str, tuple[float, float]]) -> Path:
        self.count += 1
        path = self.work / f"attempt{self.count}.int8.onnx"
        maker.make(path, self.method, [*self.kept, *kept_extra], ranges)
        self.stamp(path)
        return path

    def run(self, first: Path, first_gate: GateResult, first_seconds: float) -> Repaired:
        """Repair ``first``, the plain variant that failed ``first_gate`` (made and gated in ``first_seconds``)."""
        attempts = [Attempt("plain int8", first_gate, first_seconds)]
        result = Repaired(False, attempts, None, {}, {}, [], 0.0)
        base, maker, current, current_gate = self.model, None, first, first_gate
        costs: dict[str, float] = {}

        def room(kind: str) -> bool:
            if self.elapsed() + costs.get(kind, 0.0) > self.budget_s:
                result.stopped = (f"--repair-budget-s {self.budget_s:g} reached after {self.elapsed():.0f} s "
                                  f"(the next step, {kind}, took {costs.get(kind, 0):.0f} s last time)")
                return False
            return True

        def attempt(kind: str, step: str, path: Path, began: float, kept_extra, found: str = "") -> Attempt:
            """Gate ``path``, made since ``began``: the step's cost is both."""
            self.progress.step(f"repair: {step}: gate")
            made = Attempt(step, self.gate.judge(path, self.spec), 0.0, list(kept_extra), found)
            made.seconds = costs[kind] = time.monotonic() - began
            attempts.append(made)
            return made

        # 1. equalization: free at run time
        began = time.monotonic()
        self.progress.step("repair: equalizing Conv -> Relu -> Conv pairs")
        equalized, pairs, parity = self._equalize()
        if equalized is not None:
            eq_maker = type(self.plain_maker)(equalized, self.plain_maker.spec, self.inputs, self.work / "equalized",
                                              self.progress, prepared=True)
            path = self._variant(eq_maker, [], {})
            made = attempt("equalize", f"equalize {len(pairs)} Conv->Relu->Conv pairs", path, began, [])
            if made.gate.passed:
                return self._done(result, path, pairs, {}, [], first)
            if made.gate.worst_top1() >= first_gate.worst_top1():
                base, maker, current, current_gate, result.equalized = equalized, eq_maker, path, made.gate, pairs
        else:
            attempts.append(Attempt(f"equalize: skipped ({parity})", first_gate, time.monotonic() - began))
        if maker is None:
            base, maker = self.plain_maker.prepared, self.plain_maker

        # 2-4. locate, re-range, keep in fp32
        kept_extra: list[str] = []
        ranges: dict[str, tuple[float, float]] = {}
        tried_ranges: set[str] = set()
        while True:
            if not room("locate"):
                break
            began = time.monotonic()
            self.progress.step(f"repair: locating what breaks attempt {len(attempts)}")
            verdict = self._locate(base, current, current_gate)
            costs["locate"] = time.monotonic() - began
            if verdict is None:
                result.stopped = ("the locator needs PyTorch's answers beside the fp32 model (<stem>.reference.npz)"
                                  if self.gate.reference is None else "no failing target ran the variant to locate on")
                break
            if verdict["kind"] != "culprit":
                result.stopped = f"the locator found no single culprit: {verdict['line']}"
                break
            tensor = verdict.get("input_tensor") if verdict["fault"] == "input" else None
            if tensor is not None and tensor not in tried_ranges:
                tried_ranges.add(tensor)
                better = None
                values = self._values(base, tensor)
                for how in RANGE_METHODS:
                    if not room("re-range"):
                        break
                    began = time.monotonic()
                    trial = {**ranges, tensor: tensor_range(values, how)}
                    path = self._variant(maker, kept_extra, trial)
                    made = attempt("re-range", f"re-range {tensor} by {how}", path, began, kept_extra, verdict["line"])
                    record = {**result.ranges, tensor: {"method": how, "min": trial[tensor][0], "max": trial[tensor][1]}}
                    if made.gate.passed:
                        result.ranges = record
                        return self._done(result, path, result.equalized, result.ranges, kept_extra, first)
                    if made.gate.worst_top1() > (better[1] if better else current_gate).worst_top1():
                        better = (trial, made.gate, path, record)
                if better is not None:
                    ranges, current_gate, current, result.ranges = better
                    continue
            unit = [n for n in verdict["keep_fp32"] if n not in self.kept and n not in kept_extra]
            if not unit:
                result.stopped = f"the locator names {verdict['node']} again, already in fp32: {verdict['line']}"
                break
            if len(kept_extra) + len(unit) > self.max_fp32_nodes:
                result.stopped = (f"--max-fp32-nodes {self.max_fp32_nodes}: keeping {', '.join(unit)} too would make "
                                  f"{len(kept_extra) + len(unit)}")
                break
            if not room("keep"):
                break
            began = time.monotonic()
            trial_kept = [*kept_extra, *unit]
            path = self._variant(maker, trial_kept, ranges)
            made = attempt("keep", f"keep {', '.join(unit)} in fp32", path, began, trial_kept, verdict["line"])
            kept_extra, current, current_gate = trial_kept, path, made.gate
            if made.gate.passed:
                return self._done(result, path, result.equalized, result.ranges, kept_extra, first)
        result.fp32_nodes, result.seconds = kept_extra, self.elapsed()
        return result

    def _done(self, result: Repaired, path: Path, equalized, ranges, kept_extra, first: Path) -> Repaired:
        result.passed, result.path, result.equalized, result.ranges = True, path, equalized, ranges
        result.fp32_nodes = list(kept_extra)
        self.progress.step("repair: timing fp32, plain int8 and the repaired int8 on ONNX Runtime CPU")
        result.speed = paired_speed({"fp32": self.model, "plain int8": first, "repaired int8": path}, self.spec,
                                    self.inputs[:1])
        result.seconds = self.elapsed()
        return result

    def _equalize(self) -> tuple[Path | None, dict[str, float], str]:
        """(the equalized fp32 model, its pairs, why not) once it gives the fp32 model's answers."""
        import onnx

        from converters.equalize import equalize
        from runtimes.parity import compare
        from runtimes.reference import replay
        from runtimes.tolerances import FP32

        model = onnx.load(str(self.plain_maker.prepared))  # pre-processed once: equalized, it needs no more
        pairs = equalize(model)
        if not pairs:
            return None, {}, "no Conv -> Relu -> Conv pair to equalize"
        path = self.work / "equalized.fp32.onnx"
        onnx.save(model, str(path))
        parent = self.plain_maker.spec
        stats = compare(self.gate.expected, logits("cpu", path, parent, self.inputs), FP32)
        checks = []
        if self.gate.reference is not None:
            from runtimes.adapters import create_runner

            with create_runner("cpu", path, parent) as runner:
                checks = replay(runner, self.gate.reference, FP32)
        if not stats.passed or not all(c.passed for c in checks):
            return None, {}, f"the equalized fp32 model strays from the original: max |d| {stats.max_abs:.2e}"
        return path, pairs, ""

    def _locate(self, base: Path, variant: Path, gate: GateResult) -> dict[str, Any] | None:
        """The locator's verdict on the first failing target, on calibration images the variant gets wrong there."""
        from runtimes.diagnosis import diagnose

        failing = next((t for t in gate.targets if not t.passed and t.error is None), None)
        if failing is None or self.gate.reference is None:
            return None
        wrong = np.flatnonzero(failing.logits.argmax(1) != self.gate.expected.argmax(1))
        chosen = (list(wrong) or [0])[:LOCATE_IMAGES]
        report = diagnose(base, variant, failing.target, "int8", self.gate.reference, self.inputs[chosen])
        return {**report["verdict"], "line": report["line"]}

    def _values(self, base: Path, tensor: str) -> np.ndarray:
        """``tensor``'s fp32 values on the calibration images."""
        import onnx

        from runtimes.cut import run_reference

        model = onnx.load(str(base))
        name = model.graph.input[0].name
        return np.concatenate([run_reference(model, {name: self.inputs[i: i + 8]}, [tensor])[tensor].ravel()
                               for i in range(0, len(self.inputs), 8)])


def paired_speed(models: dict[str, Path], spec, x: np.ndarray, rounds: int = 5, calls: int = 8) -> dict[str, Any]:
    """Median ms per call of each model on ONNX Runtime CPU, measured in interleaved rounds (each
    round runs every model ``calls`` times, in a fresh random order), and each int8 model's
    speed-up over the first, from the per-round ratios: a slow spell of the machine hits all."""
    from runtimes.adapters import create_runner

    names = list(models)
    runners = {name: create_runner("cpu", path, spec, batch_size=len(x)).load() for name, path in models.items()}
    try:
        per_round: dict[str, list[float]] = {name: [] for name in names}
        order = random.Random(0)
        for _ in range(rounds):
            for name in order.sample(names, len(names)):
                runners[name].infer(x)  # warm-up: the other sessions' threads have just run
                times = []
                for _ in range(calls):
                    began = time.perf_counter()
                    runners[name].infer(x)
                    times.append(time.perf_counter() - began)
                per_round[name].append(statistics.median(times))
    finally:
        for runner in runners.values():
            runner.close()
    first = names[0]
    from runtimes.device import cpu_info

    record: dict[str, Any] = {"ms": {n: round(1000 * statistics.median(t), 2) for n, t in per_round.items()},
                              "rounds": rounds, "calls": calls, "batch": len(x), "cpu": cpu_info()["model"]}
    for name in names[1:]:
        record[f"speedup {name}"] = round(statistics.median(
            a / b for a, b in zip(per_round[first], per_round[name])), 3)
    if "plain int8" in models and "repaired int8" in models:
        plain, repaired = record["speedup plain int8"], record["speedup repaired int8"]
        record["kept"] = round(repaired / plain, 3)  # of the plain int8 model's speed-up over fp32
    return record
