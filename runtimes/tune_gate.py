"""The tuner's gate: each candidate screened (loaded, checked on the smallest seeded batch, timed
for a few calls), then the leaders gated in full against the bundle's reference answers, the rest
after the race while the budget lasts; with ``--labelled``, each also bounded against the fp32
model image by image. Used by ``runtimes.tune``; every status and reason a candidate gets here
is what tuned.json records."""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from runtimes.errors import ToolkitError
from runtimes.progress import Progress

MIN_FREE_MEMORY = 2 << 30  # below this much available memory, a gated session is closed until its block
SCREEN_CALLS = 3  # timed calls when a candidate is first loaded; the fastest of them orders the gates
# A candidate that passed, but whose fastest screened call cost more than this times the fastest
# one's, is not raced: ORT and OpenVINO calls on a busy 2-core machine rarely stretch past 1.5x
# at their fastest, while the runtimes and precisions here differ by 2-6x (AMD EPYC, Intel Xeon).
LEAD_FACTOR = 1.5


class TuneError(ToolkitError):
    """The tuner cannot run as asked."""


@dataclass
class Candidate:
    """One configuration and everything learned about it."""

    config: Any  # runtimes.tuned.Configuration
    status: str = "planned"
    reason: str = ""
    gate: dict[str, Any] | None = None
    labelled: dict[str, Any] | None = None
    times: list[float] = field(default_factory=list)  # seconds of the screen's and the gate's timed calls
    load_s: float = 0.0  # seconds to load it here (a fresh process's confirmation is sized from it)
    versus: str = ""  # for one not separated from the choice: how it compares, in words
    located: str | None = None  # for a rejected candidate: runtimes.diverge's verdict line
    runner: Any = None
    entrant: Any = None  # runtimes.race.Entrant once it races

    @property
    def estimate_s(self) -> float:
        """Seconds per call, before the race: the fastest of its timed calls (load only slows a call down)."""
        return min(self.times) if self.times else 0.0

    def record(self, choice: "Candidate | None", per_image: bool) -> dict[str, Any]:
        from runtimes.race import p99, ratio

        record = {**self.config.as_dict(), "status": self.status, "reason": self.reason, "gate": self.gate}
        if self.labelled is not None:
            record["labelled"] = self.labelled
        if self.located is not None:
            record["located"] = self.located
        if self.times:
            record["screen"] = {"load_s": round(self.load_s, 3), "fastest_call_ms": round(self.estimate_s * 1e3, 3)}
        e = self.entrant
        if e is not None and e.measured:
            divide = self.config.batch_size if per_image else 1
            timing: dict[str, Any] = {
                "rounds": len(e.measured),
                "median_ms": round(statistics.median(e.call_times) * 1e3, 3),
                "p99_ms": round(p99(e.call_times) * 1e3, 3),
                "cost_ms": round(e.median_cost * 1e3, 4),
                "cost": "ms per image" if per_image and divide > 1 else "ms per call",
                "block_spread": round(statistics.median(e.spreads), 3) if e.spreads else None,
            }
            r = ratio(e, choice.entrant) if choice is not None and choice.entrant is not None else None
            if r is not None and choice is not self:
                timing["ratio_to_choice"] = round(r.value, 4)
                timing["ratio_ci"] = [round(r.low, 4), round(r.high, 4) if r.high != float("inf") else None]
            record["timing"] = timing
        return record


def screen(candidate: Candidate, opened, reference, runners: contextlib.ExitStack) -> None:
    """Load ``candidate``, replay the smallest seeded batch through it and time SCREEN_CALLS calls:
    a first check, and a cost to order the gates by. Its status becomes screened, rejected
    (wrong answers) or skipped (cannot run here)."""
    from runtimes.adapters import create_runner
    from runtimes.errors import NonFiniteError

    config = candidate.config
    model = opened.model(config.model_precision)
    started = time.monotonic()
    runner = create_runner(config.provider, model.path, model.spec, batch_size=config.batch_size, **config.options())
    try:
        runner.load()
    except NonFiniteError as exc:
        candidate.status, candidate.reason = "rejected", f"gives NaN or Inf: {exc}"
        return
    except ToolkitError as exc:
        candidate.status, candidate.reason = "skipped", f"cannot run here: {exc}"
        return
    candidate.load_s = time.monotonic() - started
    if _replay(candidate, runner, opened, reference, reference.subset(0), SCREEN_CALLS, "screen", started):
        candidate.status, candidate.runner = "screened", runner
        runners.callback(runner.close)


def gate(candidate: Candidate, opened, reference, runners: contextlib.ExitStack) -> None:
    """Replay the whole reference through ``candidate`` (screened first, if it was not); its status
    becomes passed, rejected (wrong answers) or skipped (cannot run here)."""
    if candidate.runner is None:
        screen(candidate, opened, reference, runners)
    if candidate.status != "screened":
        return
    runner = loaded(candidate)
    if not _replay(candidate, runner, opened, reference, reference, 3, "gate", time.monotonic()):
        return
    candidate.status, candidate.reason = "passed", ""
    if available_memory() < MIN_FREE_MEMORY:  # reloaded around each of its blocks instead
        runner.close()


def _replay(candidate: Candidate, runner, opened, reference, rows, calls: int, stage: str, started: float) -> bool:
    """Replay ``rows`` (the reference or a part of it) through ``runner`` and, if every check
    passes, time ``calls`` calls. False when that rejected the candidate (wrong answers, a NaN) or
    skipped it (it failed to run), with its runner closed; the gate's checks are its record."""
    from runtimes.errors import NonFiniteError
    from runtimes.reference import replay
    from runtimes.tolerances import for_precision

    config = candidate.config
    tol = for_precision(config.tolerance_precision)
    try:
        checks = replay(runner, rows, tol, config.batch_size)
        if all(c.passed for c in checks):
            candidate.times += _timed(runner, config, calls)
    except ToolkitError as exc:
        runner.close()
        candidate.status = "rejected" if isinstance(exc, NonFiniteError) else "skipped"
        candidate.reason = f"failed in the {stage}: {exc}"
        return False
    failed = [c for c in checks if not c.passed]
    if failed or stage == "gate":
        candidate.gate = _gate_record(checks, tol, started)
    if failed:
        runner.close()
        candidate.status, candidate.reason = "rejected", _parity_reason(failed[0], tol)
        model = opened.model(config.model_precision)
        candidate.located = _locate(config, opened, model, reference, checks, runner.spec)
        return False
    return True


def _timed(runner, config, calls: int) -> list[float]:
    """Seconds of ``calls`` inferences of a seeded batch; a NaN or Inf in one raises NonFiniteError."""
    import numpy as np

    from runtimes.errors import NonFiniteError

    batch = noise(config.batch_size, runner.spec.crop_size)
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        output = runner.infer(batch)
        times.append(time.perf_counter() - t0)
        if not np.isfinite(output).all():
            raise NonFiniteError("NaN or Inf in the output of a timed call")
    return times


def _gate_record(checks, tol, started: float) -> dict[str, Any]:
    return {
        "passed": all(c.passed for c in checks),
        "seconds": round(time.monotonic() - started, 3),
        "tolerance": f"atol {tol.atol:g}, rtol {tol.rtol:g}" if tol.elementwise else f"top-1 agreement >= {tol.min_top1:.0%}",
        "checks": [{"name": c.name, "judged": c.judged, "passed": c.passed, "max_abs": _finite(c.stats.max_abs),
                    "violations": c.stats.violations, "top1_agreement": round(c.stats.top1_agreement, 4)}
                   for c in checks],
    }


def _group(config) -> tuple:
    """A configuration less its thread count: the candidates that differ only in threads."""
    return (config.provider, config.precision, config.batch_size, config.hint)


def screen_all(candidates: list[Candidate], opened, reference, runners, until: float, progress: Progress, args) -> None:
    """Screen each group's candidate with the most threads, then the other thread counts of the
    groups within LEAD_FACTOR of the fastest; then one more pass over all screened, in a random
    order, so that a burst of load during one screen does not rank it."""
    import random

    def timed_screen(c: Candidate) -> None:
        progress.step(f"screen: {c.config.label()}")
        if time.monotonic() + statistics.median(spent or [0.0]) > until:
            c.status, c.reason = "skipped", "the budget ran out before its screen"
            return
        begun = time.monotonic()
        screen(c, opened, reference, runners)
        spent.append(time.monotonic() - begun)

    spent: list[float] = []
    most: dict[tuple, Candidate] = {}
    for c in candidates:
        held = most.get(_group(c.config))
        if held is None or (c.config.threads or 1 << 30) > (held.config.threads or 1 << 30):
            most[_group(c.config)] = c
    for c in most.values():
        timed_screen(c)
    screened = [c for c in most.values() if c.status == "screened"]
    if screened:
        best = min(cost(c, args) for c in screened)
        for c in candidates:
            primary = most[_group(c.config)]
            if c is primary:
                continue
            if primary.status == "screened" and cost(primary, args) <= LEAD_FACTOR * best:
                timed_screen(c)
            elif primary.status == "screened":
                c.reason = (f"not screened: with {primary.config.threads} threads it was "
                            f"{cost(primary, args) / best:.2f}x the fastest in the screen")
    again = [c for c in candidates if c.status == "screened"]
    random.shuffle(again)
    for c in again:
        if time.monotonic() > until:
            break
        try:
            c.times += _timed(loaded(c), c.config, 2)
        except ToolkitError as exc:
            c.runner.close()
            c.status, c.reason = "rejected", f"failed in the screen: {exc}"


def gate_leaders(candidates: list[Candidate], opened, reference, runners, until: tuple[float, float],
                  progress: Progress, args) -> None:
    """The whole gate for the screened candidates in order of cost, up to the first two that pass
    and every one within LEAD_FACTOR of the fastest that passes; the rest wait (``_gate_the_rest``).
    ``until``: (when gating should end, when it must): the first two may use the race's time,
    for a race without its leaders would decide nothing."""
    best: Candidate | None = None
    passed = 0
    rows = sum(len(x) for x in reference.inputs) + len(reference.images)
    for c in sorted((c for c in candidates if c.status == "screened"), key=lambda c: cost(c, args)):
        if passed >= 2 and cost(c, args) > LEAD_FACTOR * cost(best, args):
            break
        progress.step(f"gate: {c.config.label()}")
        limit = until[0] if passed >= 2 else until[1]
        if time.monotonic() + 1.5 * rows / c.config.batch_size * c.estimate_s > limit:
            break
        gate(c, opened, reference, runners)
        if c.status == "passed":
            passed += 1
            best = c if best is None or cost(c, args) < cost(best, args) else best


def leaders(passing: list[Candidate], args) -> list[Candidate]:
    """The candidates that race: the two fastest that passed, and every other within LEAD_FACTOR
    of the fastest; so the choice is always timed against a runner-up."""
    ordered = sorted(passing, key=lambda c: cost(c, args))
    return [c for i, c in enumerate(ordered) if i < 2 or cost(c, args) <= LEAD_FACTOR * cost(ordered[0], args)]


def not_raced(candidate: Candidate, leader: Candidate, args) -> None:
    """A candidate gated after the race: eliminated when its fastest call was more than LEAD_FACTOR
    times the fastest racer's, else undecided (the race never measured it against the choice)."""
    r = cost(candidate, args) / cost(leader, args)
    candidate.versus = f"{r:.2f}x by their fastest calls, not raced"
    if r > LEAD_FACTOR:
        candidate.status = "eliminated"
        candidate.reason = (f"passed the gate; {r:.2f}x the cost of {leader.config.label()} in the screen (more than "
                            f"{LEAD_FACTOR:g}x): not raced")
    else:
        candidate.status = "undecided"
        candidate.reason = (f"passed the gate after the race, with its fastest call {r:.2f}x that of "
                            f"{leader.config.label()}: not raced, so not separated from it")


def gate_the_rest(candidates: list[Candidate], opened, reference, runners, until: float, progress: Progress,
                   args) -> None:
    """After the race, while the budget lasts: the whole gate for the candidates still waiting, so
    that they are evidence and fallbacks; the others are skipped with the reason."""
    waiting = sorted((c for c in candidates if c.status in ("screened", "planned")),
                     key=lambda c: (c.status != "screened", cost(c, args) if c.times else 0.0))
    for c in waiting:
        if time.monotonic() + statistics.median([*(x.gate["seconds"] for x in candidates if x.gate), 0.5]) > until:
            break
        progress.step(f"gate: {c.config.label()}")
        gate(c, opened, reference, runners)
    for c in candidates:
        if c.status == "screened":
            c.runner.close()
            c.status, c.reason = "skipped", (
                f"screened only ({cost(c, args) / min(cost(x, args) for x in candidates if x.times):.2f}x the "
                "fastest in the screen): the budget ran out before its whole gate")
        elif c.status == "planned":
            c.status, c.reason = "skipped", c.reason or "the budget ran out before its screen"


def cost(candidate: Candidate, args) -> float:
    """The gate's seconds per call, or per image for the throughput metric."""
    return candidate.estimate_s / (candidate.config.batch_size if args.metric == "throughput" else 1)


def loaded(candidate: Candidate):
    if candidate.runner is not None and not candidate.runner._loaded:
        candidate.runner.load()
    return candidate.runner


def _locate(config, opened, model, reference, checks, spec) -> str | None:
    """The locator's verdict line for a rejected candidate (``runtimes.diverge``), where the
    onnx package is installed to cut graphs with; None where it is not or the locator fails."""
    import importlib.util

    if importlib.util.find_spec("onnx") is None or "fp32" not in opened.models:
        return None
    from runtimes.diagnosis import diagnose, failing_input

    try:
        return diagnose(opened.model("fp32").path, model.path, config.provider, config.tolerance_precision, reference,
                        failing_input(checks, reference, spec), options=config.options())["line"]
    except ToolkitError as exc:
        return f"the locator failed: {exc}"


def _parity_reason(check, tol) -> str:
    s = check.stats
    if s.max_abs == float("inf"):
        return f"{check.name}: NaN or Inf in the output"
    if not tol.elementwise:
        return f"{check.name}: top-1 agrees with PyTorch on {s.top1_agreement:.1%}, below {tol.min_top1:.0%}"
    if s.violations:
        return (f"{check.name}: {s.violations} logits outside atol {tol.atol:g} + rtol {tol.rtol:g} "
                f"(max |d| {s.max_abs:.3g})")
    return f"{check.name}: top-1 {s.top1_agreement:.0%}, top-5 {s.top5_agreement:.0%} of rows agree with PyTorch"


def _finite(value: float) -> float | None:
    return None if value != value or value in (float("inf"), float("-inf")) else float(f"{value:.4g}")


def noise(batch_size: int, size: int):
    import numpy as np

    return np.random.default_rng(0).standard_normal((batch_size, 3, size, size), dtype=np.float32)


def available_memory() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return MIN_FREE_MEMORY  # unknown: keep sessions loaded


def read_labelled(args, opened) -> dict[str, Any]:
    """The labelled images, preprocessed; a TuneError when they are too few to bound --max-drop."""
    from runtimes import preprocess
    from runtimes.errors import ImageError
    from runtimes.labelled import detectable_drop, images_needed, labelled_files

    spec = opened.model("fp32").spec if "fp32" in opened.models else opened.model().spec
    tensors, truths, unreadable = [], [], 0
    for path, truth in labelled_files(args.labelled, spec.labels):
        try:
            tensors.append(preprocess.load(path.read_bytes(), spec, str(path)))
            truths.append(truth)
        except (ImageError, OSError):
            unreadable += 1
    floor = detectable_drop(len(tensors)) * 100
    if floor > args.max_drop:
        raise TuneError(
            f"--labelled {args.labelled} has {len(tensors)} readable images: with no image differing, they bound a "
            f"drop only to {floor:.1f} points at 95%, above --max-drop {args.max_drop:g}; give at least "
            f"{images_needed(args.max_drop / 100)} images or a larger --max-drop"
        )
    return {"tensors": preprocess.stack(tensors), "truths": truths, "images": len(tensors), "unreadable": unreadable,
            "detectable_points": round(floor, 2)}


def labelled_check(candidates: list[Candidate], labelled: dict[str, Any], max_drop: float, opened) -> None:
    """Reject each passing candidate whose top-1 drop against the fp32 model may exceed ``max_drop`` points.
    The fp32 model's answers come from a candidate that passed, else from ONNX Runtime CPU."""
    import numpy as np

    from runtimes.adapters import create_runner
    from runtimes.labelled import drop_bound

    passing = [c for c in candidates if c.status == "passed"]
    base = next((c for c in passing if c.config.precision == "fp32"), None)
    passing = [c for c in passing if c.labelled is None]  # a second call checks those gated since the first
    truths = np.asarray(labelled["truths"])

    def right(runner, b: int) -> Any:
        tensors = labelled["tensors"]
        rows = [runner.infer(np.resize(tensors[i : i + b], (b, *tensors.shape[1:])))[: len(tensors[i : i + b])]
                for i in range(0, len(tensors), b)]
        return np.concatenate(rows).argmax(axis=1) == truths

    if base is not None:
        reference = right(loaded(base), base.config.batch_size)
    else:
        fp32 = opened.model("fp32")
        with create_runner("cpu", fp32.path, fp32.spec) as runner:
            reference = right(runner, 8)
    n = labelled["images"]
    for candidate in passing:
        mine = reference if candidate is base else right(loaded(candidate), candidate.config.batch_size)
        lost, gained = int(np.sum(reference & ~mine)), int(np.sum(~reference & mine))
        bound = drop_bound(lost, gained, n) * 100
        candidate.labelled = {"images": n, "lost": lost, "gained": gained, "top1": round(float(mine.mean()), 4),
                              "drop_bound_points": round(bound, 2), "detectable_points": labelled["detectable_points"]}
        if bound > max_drop:
            candidate.status = "rejected"
            candidate.reason = (f"on {n} labelled images it lost {lost} and gained {gained} against fp32: the drop may be "
                                f"{bound:.1f} points at 95%, over --max-drop {max_drop:g}")
