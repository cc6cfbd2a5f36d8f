"""Pick, on this device, the fastest configuration of a bundle that still gives PyTorch's answers.

    python -m runtimes.tune --bundle DIR|DIR.tar.gz [--budget-s 120] [--metric latency|throughput]
        [--providers cpu,openvino] [--precisions fp32,int8,bf16] [--batch-sizes 1] [--threads 1,2]
        [--max-p99-ms MS] [--min-gain 0.03] [--labelled DIR --max-drop POINTS]
        [--force] [--dry-run] [--json] [--plot tune.png]

1. Candidates: every provider, precision (the bundle's files; OpenVINO's bf16 and f16 on
   the fp32 file), batch size, thread count and OpenVINO hint that can run here
   (``runtimes.candidates``); each one dropped is listed with its reason.
2. Screen: each candidate is loaded, checked on the smallest seeded batch and timed for a
   few calls, with the most threads first; the other thread counts only of the
   configurations within ``LEAD_FACTOR`` of the fastest.
3. Gate, in order of the screen's cost: each candidate replays the bundle's reference
   answers (seeded inputs, images, PyTorch's logits) in exactly its configuration, at its
   batch size, judged by ``runtimes.parity`` with the tolerance ``runtimes.verify`` uses for
   its precision (int8: top-1 agreement on the images). A NaN or Inf rejects it. With
   ``--labelled``, it is also compared with the fp32 model image by image. A rejected
   candidate is never chosen, and only a gated one is ever a choice or a fallback.
4. Race: the two fastest that pass and every other within ``LEAD_FACTOR`` stay loaded and are
   timed in interleaved rounds, each compared with the leader by paired per-round ratios
   (``runtimes.race``). Only an interval inside ``--min-gain`` is a tie; one not separated
   when the race stops is "undecided", said in one line, and the leader stands. The other
   candidates are gated afterwards while the budget lasts, as fallbacks.
5. Confirmation: the winner against the runner-up in fresh processes, each loading its
   configuration as ``runtimes.run --bundle`` does.
6. ``DIR/tuned.json`` (a tarball gets ``DIR.tar.gz.tuned.json`` beside it), written
   atomically: the choice and its ranked fallbacks, every candidate with its evidence,
   the protocol and the device fingerprint. ``runtimes.run``, ``runtimes.verify`` and
   ``deploy.serve`` use it while the bundle and the device match (``runtimes.tuned``).
   One for the same bundle, device and metric that holds more evidence (more candidates
   gated, or as many over more race rounds) is kept unless ``--force``.

The whole run, gate included, keeps to ``--budget-s``. Exit status: 0 a choice was
made; 3 no candidate gives PyTorch's answers (the evidence is written, with no
choice); 1 every one that does exceeded ``--max-p99-ms``; 2 a user error, or no candidate
could run here at all (the evidence is written too).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtimes import __version__
from runtimes.cli import EXIT_FAILED, EXIT_PARITY_FAILED, EXIT_USER_ERROR, csv_list, points, run_cli
from runtimes.errors import ToolkitError
from runtimes.progress import Progress
from runtimes.race import MIN_ROUNDS  # fewer paired rounds give no interval worth printing

DEFAULT_BUDGET_S = 120.0
DEFAULT_MIN_GAIN = 0.03
DEFAULT_MAX_DROP = 1.0  # points of top-1, with --labelled
CONFIRM_PAIRS = 2
CONFIRM_SECONDS = 1.0  # timed calls per confirming process
CHILD_OVERHEAD_S = 1.5  # start-up, imports and load of one confirming process (2-core Xeon: 0.4-1.1 s)
MIN_FREE_MEMORY = 2 << 30  # below this much available memory, a gated session is closed until its block
BUSY_CORES = 0.5  # other processes using more than this many cores during a round: warn
BUSY_SPREAD = 0.15  # a median within-block interquartile range above this share of the median: warn
STATUS_ORDER = ("chosen", "tied", "undecided", "eliminated", "rejected", "skipped")
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


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m runtimes.tune", description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="a bundle folder or .tar.gz from `python -m deploy.bundle`")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                        help=f"wall time for the whole run, gate and confirmation included (default: {DEFAULT_BUDGET_S:g})")
    parser.add_argument("--metric", choices=("latency", "throughput"), default="latency",
                        help="latency: time per call; throughput: time per image (default: latency)")
    parser.add_argument("--providers", help="comma-separated (default: the bundle's, in its order)")
    parser.add_argument("--precisions", help="comma-separated: fp32, fp16, int8 (the bundle's files), bf16, f16 "
                        "(OpenVINO's inference precision on the fp32 file) (default: all of them)")
    parser.add_argument("--batch-sizes", help="comma-separated (default: 1 for latency, 1,8 for throughput)")
    parser.add_argument("--threads", help="comma-separated intra-op thread counts (default: 1 and the physical cores)")
    parser.add_argument("--max-p99-ms", type=float, help="throughput: eliminate a candidate whose p99 call is slower")
    parser.add_argument("--min-gain", type=float, default=DEFAULT_MIN_GAIN,
                        help=f"closer than this fraction is a tie, settled by precision, threads and the bundle's "
                             f"provider order (default: {DEFAULT_MIN_GAIN})")
    parser.add_argument("--labelled", type=Path, help="a folder of labelled images (one subfolder per class): also "
                        "bound each candidate's top-1 drop against the fp32 model")
    parser.add_argument("--max-drop", type=points, default=DEFAULT_MAX_DROP, metavar="POINTS",
                        help=f"with --labelled: reject a candidate whose drop may exceed this, at 95%% (default: {DEFAULT_MAX_DROP:g})")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing tuned.json even when it holds more evidence than this run")
    parser.add_argument("--dry-run", action="store_true", help="print the candidates and the plan; run nothing")
    parser.add_argument("--json", action="store_true", help="print the tuned.json object instead of the table")
    parser.add_argument("--plot", type=Path, help="write a bar per candidate with its interval to this PNG")
    parser.add_argument("--confirm-child", help=argparse.SUPPRESS)  # a fresh process timing one configuration
    args = parser.parse_args(argv)
    try:
        args.batch_sizes = csv_list(args.batch_sizes, int)
        args.threads = csv_list(args.threads, int)
    except ValueError:
        parser.error("--batch-sizes and --threads take comma-separated integers")
    from runtimes.device import allowed_cores
    from runtimes.tuned import MAX_BATCH_SIZE, PRECISION_RANK

    for name, most in (("batch_sizes", MAX_BATCH_SIZE), ("threads", allowed_cores())):
        values = getattr(args, name)
        if values is not None and (not values or min(values) < 1 or max(values) > most):
            parser.error(f"argument --{name.replace('_', '-')}: give integers from 1 to {most}"
                         + (" (the cores this process may use)" if name == "threads" else ""))
    if not 0 < args.budget_s < float("inf"):
        parser.error("argument --budget-s: must be a positive number of seconds")
    if args.labelled is not None and not args.max_drop > 0:
        parser.error("argument --max-drop: must be above 0 (no finite set of images bounds a drop of 0)")
    if not 0 <= args.min_gain < 1:
        parser.error("argument --min-gain: must be at least 0 and below 1")
    if args.max_p99_ms is not None and not args.max_p99_ms > 0:
        parser.error("argument --max-p99-ms: must be positive")
    args.providers, args.precisions = csv_list(args.providers), csv_list(args.precisions)

    for name in ("providers", "precisions"):
        if getattr(args, name) == []:
            parser.error(f"argument --{name}: name at least one")
    unknown = [p for p in args.precisions or [] if p not in PRECISION_RANK]
    if unknown:
        parser.error(f"argument --precisions: unknown {unknown[0]!r}; known: {', '.join(PRECISION_RANK)}")
    if args.plot is not None and not args.dry_run and not args.confirm_child:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            parser.error("--plot needs matplotlib: pip install matplotlib")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.confirm_child:
        return _confirm_child(args.bundle, json.loads(args.confirm_child))
    return tune(args)


def tune(args: argparse.Namespace, out=None, err=None) -> int:
    from runtimes.adapters import RUNNERS, runner_class, unavailable_reason
    from runtimes.bundle import MANIFEST, open_bundle, sha256_file
    from runtimes.candidates import DEFAULT_BATCH_SIZES, default_precisions, default_threads, enumerate_candidates
    from runtimes.device import cpu_info, fingerprint
    from runtimes.reference import Reference
    from runtimes.tuned import tuned_path

    out, err = out or sys.stdout, err or sys.stderr
    started = time.monotonic()
    deadline = started + args.budget_s
    cpu = cpu_info()
    with contextlib.ExitStack() as stack:
        opened = stack.enter_context(open_bundle(args.bundle))
        providers = args.providers or list(opened.providers)
        for provider in providers:  # a typo is a user error; a runtime missing here is a dropped candidate
            if provider not in RUNNERS:
                runner_class(provider)
        configs, dropped = enumerate_candidates(
            models=list(opened.models), providers=providers,
            precisions=args.precisions or default_precisions(list(opened.models)),
            batch_sizes=args.batch_sizes or DEFAULT_BATCH_SIZES[args.metric],
            threads=args.threads or default_threads(cpu["physical_cores"]),
            metric=args.metric, cpu_flags=cpu["flags"], unavailable=unavailable_reason,
        )
        candidates = [Candidate(c) for c in configs]
        skipped = [Candidate(d.configuration, "skipped", d.reason) for d in dropped]
        reference = Reference.load(opened.reference)
        pairs = _confirm_pairs(args.budget_s)
        if args.dry_run:
            _print_plan(args, candidates, skipped, reference, pairs, out)
            return 0
        labelled = _read_labelled(args, opened) if args.labelled else None
        warnings: list[str] = []
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        if load > cpu["physical_cores"]:
            warnings.append(f"the machine was busy before tuning began (load average {load:.1f} on "
                            f"{cpu['physical_cores']} cores): timings will be noisier")
        progress = stack.enter_context(Progress(2 * len(candidates) + 2 + bool(labelled), err))
        runners = stack.enter_context(contextlib.ExitStack())  # every loaded session, closed at the end
        gate_deadline = deadline - _reserve_s(pairs) - 0.2 * args.budget_s
        _screen_all(candidates, opened, reference, runners, gate_deadline, progress, args)
        _gate_leaders(candidates, opened, reference, runners, (gate_deadline, deadline - _reserve_s(pairs)), progress, args)
        if labelled is not None:
            progress.step(f"labelled: {labelled['images']} images against fp32")
            _labelled_check(candidates, labelled, args.max_drop, opened)
        racing = _leaders([c for c in candidates if c.status == "passed"], args)
        progress.step(f"race: {len(racing)} candidates")
        race = _race(racing, args, deadline - _reserve_s(pairs), progress)
        _gate_the_rest(candidates, opened, reference, runners, deadline - _reserve_s(pairs), progress, args)
        if labelled is not None:
            _labelled_check(candidates, labelled, args.max_drop, opened)
        late = [c for c in candidates if c.status == "passed" and c not in racing]
        if late and race.rounds == 0:  # the race measured nothing: all by the screen's and the gate's timing
            racing = _leaders(racing + late, args)
            late = [c for c in late if c not in racing]
            race = _race(racing, args, time.monotonic(), progress)
        for c in late:
            _not_raced(c, racing[0], args)
        choice, ranked = _decide(racing, late, race, args, list(opened.providers))
        progress.step("confirmation in fresh processes")
        confirmation = _confirm(opened.root, choice, ranked, args, pairs, deadline, warnings)
        if confirmation.get("swapped"):
            choice, ranked = ranked[0], [choice, *ranked[1:]]
            choice.status, ranked[0].status = "chosen", "tied"
            choice.reason = "tied in the race, and faster in every pair of fresh processes"
            ranked[0].reason = f"the fresh processes found {choice.config.label()} faster"
        warnings += _evidence_warnings(candidates, race, args)
        default = _bundle_default(opened, candidates, cpu["physical_cores"], args)
        record = {
            "format": 1,
            "tuned_by": f"googlenet-deploy {__version__}",
            "bundle": str(args.bundle),
            "bundle_json_sha256": sha256_file(opened.root / MANIFEST),
            "device": fingerprint(),
            "metric": args.metric,
            "choice": choice.config.as_dict() if choice else None,
            "fallbacks": [c.config.as_dict() for c in ranked],
            "speedup_vs_default": _speedup(default, choice, args.metric == "throughput"),
            "protocol": _protocol(args, race, pairs),
            "confirmation": confirmation,
            "warnings": warnings,
            "seconds": round(time.monotonic() - started, 1),
            "candidates": [c.record(choice, args.metric == "throughput") for c in _ordered(candidates + skipped)],
        }
    from runtimes.atomic import write_text

    path = tuned_path(args.bundle)
    kept = None if args.force else _more_evidence(path, record)
    if kept is None:
        try:
            write_text(path, json.dumps(record, indent=2) + "\n")
        except OSError as exc:
            raise TuneError(f"cannot write {path}: {exc.strerror or exc}") from None
    for warning in warnings:
        print(f"warning: {warning}", file=err)
    if kept is not None:
        print(f"kept {path}: {kept}; this run's choice is not written (--force replaces it)", file=err)
    print(json.dumps(record, indent=2) if args.json else _markdown(record, path, written=kept is None), file=out)
    if args.plot:
        try:
            _plot(record, args.plot)
        except OSError as exc:
            raise TuneError(f"cannot write --plot {args.plot}: {exc.strerror or exc} ({path} was written)") from None
    if choice is not None:
        return 0
    if any(c.reason.startswith("p99 ") for c in candidates):
        return EXIT_FAILED  # all gave PyTorch's answers, none within --max-p99-ms
    # nothing judged wrong, nothing able to run: not a parity failure, but this machine's lack
    return EXIT_PARITY_FAILED if any(c.status == "rejected" for c in candidates) else EXIT_USER_ERROR


def _evidence(record: dict[str, Any]) -> tuple[int, int]:
    """(candidates gated, race rounds): what a tuned.json's choice stands on."""
    gated = sum(1 for c in record.get("candidates", []) if isinstance(c, dict) and c.get("gate"))
    return gated, int(record.get("protocol", {}).get("rounds", 0))


def _more_evidence(path: Path, record: dict[str, Any]) -> str | None:
    """Why the tuned.json at ``path`` must be kept rather than replaced by ``record``: it was made
    for the same bundle, device and metric, and gated more candidates, or as many in more race
    rounds. None when it may be replaced (absent, unreadable, for something else, or weaker)."""
    from runtimes.device import fingerprint_mismatch

    try:
        old = json.loads(path.read_text(encoding="utf-8"))
        same = (old["bundle_json_sha256"] == record["bundle_json_sha256"] and old.get("metric") == record["metric"]
                and fingerprint_mismatch(old["device"], record["device"]) is None)
        theirs, ours = _evidence(old), _evidence(record)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if not same or theirs <= ours:
        return None
    return (f"it holds more evidence for this bundle and device ({theirs[0]} candidates gated, {theirs[1]} race rounds, "
            f"against this run's {ours[0]} and {ours[1]})")


def _confirm_pairs(budget_s: float) -> int:
    """Pairs of fresh processes the budget affords: at most CONFIRM_PAIRS, within a fifth of it."""
    per_pair = 2 * (CHILD_OVERHEAD_S + CONFIRM_SECONDS)
    return max(0, min(CONFIRM_PAIRS, int(0.2 * budget_s // per_pair)))


def _reserve_s(pairs: int) -> float:
    return pairs * 2 * (CHILD_OVERHEAD_S + CONFIRM_SECONDS)


# --- gate ---------------------------------------------------------------------------


def _screen(candidate: Candidate, opened, reference, runners: contextlib.ExitStack) -> None:
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


def _gate(candidate: Candidate, opened, reference, runners: contextlib.ExitStack) -> None:
    """Replay the whole reference through ``candidate`` (screened first, if it was not); its status
    becomes passed, rejected (wrong answers) or skipped (cannot run here)."""
    if candidate.runner is None:
        _screen(candidate, opened, reference, runners)
    if candidate.status != "screened":
        return
    runner = _loaded(candidate)
    if not _replay(candidate, runner, opened, reference, reference, 3, "gate", time.monotonic()):
        return
    candidate.status, candidate.reason = "passed", ""
    if _available_memory() < MIN_FREE_MEMORY:  # reloaded around each of its blocks instead
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

    batch = _noise(config.batch_size, runner.spec.crop_size)
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


def _screen_all(candidates: list[Candidate], opened, reference, runners, until: float, progress: Progress, args) -> None:
    """Screen each group's candidate with the most threads, then the other thread counts of the
    groups within LEAD_FACTOR of the fastest; then one more pass over all screened, in a random
    order, so that a burst of load during one screen does not rank it."""
    import random

    def screen(c: Candidate) -> None:
        progress.step(f"screen: {c.config.label()}")
        if time.monotonic() + statistics.median(spent or [0.0]) > until:
            c.status, c.reason = "skipped", "the budget ran out before its screen"
            return
        begun = time.monotonic()
        _screen(c, opened, reference, runners)
        spent.append(time.monotonic() - begun)

    spent: list[float] = []
    most: dict[tuple, Candidate] = {}
    for c in candidates:
        held = most.get(_group(c.config))
        if held is None or (c.config.threads or 1 << 30) > (held.config.threads or 1 << 30):
            most[_group(c.config)] = c
    for c in most.values():
        screen(c)
    screened = [c for c in most.values() if c.status == "screened"]
    if screened:
        best = min(_cost(c, args) for c in screened)
        for c in candidates:
            primary = most[_group(c.config)]
            if c is primary:
                continue
            if primary.status == "screened" and _cost(primary, args) <= LEAD_FACTOR * best:
                screen(c)
            elif primary.status == "screened":
                c.reason = (f"not screened: with {primary.config.threads} threads it was "
                            f"{_cost(primary, args) / best:.2f}x the fastest in the screen")
    again = [c for c in candidates if c.status == "screened"]
    random.shuffle(again)
    for c in again:
        if time.monotonic() > until:
            break
        try:
            c.times += _timed(_loaded(c), c.config, 2)
        except ToolkitError as exc:
            c.runner.close()
            c.status, c.reason = "rejected", f"failed in the screen: {exc}"


def _gate_leaders(candidates: list[Candidate], opened, reference, runners, until: tuple[float, float],
                  progress: Progress, args) -> None:
    """The whole gate for the screened candidates in order of cost, up to the first two that pass
    and every one within LEAD_FACTOR of the fastest that passes; the rest wait (``_gate_the_rest``).
    ``until``: (when gating should end, when it must): the first two may use the race's time,
    for a race without its leaders would decide nothing."""
    best: Candidate | None = None
    passed = 0
    rows = sum(len(x) for x in reference.inputs) + len(reference.images)
    for c in sorted((c for c in candidates if c.status == "screened"), key=lambda c: _cost(c, args)):
        if passed >= 2 and _cost(c, args) > LEAD_FACTOR * _cost(best, args):
            break
        progress.step(f"gate: {c.config.label()}")
        limit = until[0] if passed >= 2 else until[1]
        if time.monotonic() + 1.5 * rows / c.config.batch_size * c.estimate_s > limit:
            break
        _gate(c, opened, reference, runners)
        if c.status == "passed":
            passed += 1
            best = c if best is None or _cost(c, args) < _cost(best, args) else best


def _leaders(passing: list[Candidate], args) -> list[Candidate]:
    """The candidates that race: the two fastest that passed, and every other within LEAD_FACTOR
    of the fastest; so the choice is always timed against a runner-up."""
    ordered = sorted(passing, key=lambda c: _cost(c, args))
    return [c for i, c in enumerate(ordered) if i < 2 or _cost(c, args) <= LEAD_FACTOR * _cost(ordered[0], args)]


def _not_raced(candidate: Candidate, leader: Candidate, args) -> None:
    """A candidate gated after the race: eliminated when its fastest call was more than LEAD_FACTOR
    times the fastest racer's, else undecided (the race never measured it against the choice)."""
    r = _cost(candidate, args) / _cost(leader, args)
    candidate.versus = f"{r:.2f}x by their fastest calls, not raced"
    if r > LEAD_FACTOR:
        candidate.status = "eliminated"
        candidate.reason = (f"passed the gate; {r:.2f}x the cost of {leader.config.label()} in the screen (more than "
                            f"{LEAD_FACTOR:g}x): not raced")
    else:
        candidate.status = "undecided"
        candidate.reason = (f"passed the gate after the race, with its fastest call {r:.2f}x that of "
                            f"{leader.config.label()}: not raced, so not separated from it")


def _gate_the_rest(candidates: list[Candidate], opened, reference, runners, until: float, progress: Progress,
                   args) -> None:
    """After the race, while the budget lasts: the whole gate for the candidates still waiting, so
    that they are evidence and fallbacks; the others are skipped with the reason."""
    waiting = sorted((c for c in candidates if c.status in ("screened", "planned")),
                     key=lambda c: (c.status != "screened", _cost(c, args) if c.times else 0.0))
    for c in waiting:
        if time.monotonic() + statistics.median([*(x.gate["seconds"] for x in candidates if x.gate), 0.5]) > until:
            break
        progress.step(f"gate: {c.config.label()}")
        _gate(c, opened, reference, runners)
    for c in candidates:
        if c.status == "screened":
            c.runner.close()
            c.status, c.reason = "skipped", (
                f"screened only ({_cost(c, args) / min(_cost(x, args) for x in candidates if x.times):.2f}x the "
                "fastest in the screen): the budget ran out before its whole gate")
        elif c.status == "planned":
            c.status, c.reason = "skipped", c.reason or "the budget ran out before its screen"


def _locate(config, opened, model, reference, checks, spec) -> str | None:
    """The locator's verdict line for a rejected candidate (``runtimes.diverge``), where the
    onnx package is installed to cut graphs with; None where it is not or the locator fails."""
    import importlib.util

    if importlib.util.find_spec("onnx") is None or "fp32" not in opened.models:
        return None
    from runtimes.locate import diagnose, failing_input

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


def _noise(batch_size: int, size: int):
    import numpy as np

    return np.random.default_rng(0).standard_normal((batch_size, 3, size, size), dtype=np.float32)


def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return MIN_FREE_MEMORY  # unknown: keep sessions loaded


# --- labelled images ------------------------------------------------------------------


def _read_labelled(args, opened) -> dict[str, Any]:
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


def _labelled_check(candidates: list[Candidate], labelled: dict[str, Any], max_drop: float, opened) -> None:
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
        reference = right(_loaded(base), base.config.batch_size)
    else:
        fp32 = opened.model("fp32")
        with create_runner("cpu", fp32.path, fp32.spec) as runner:
            reference = right(runner, 8)
    n = labelled["images"]
    for candidate in passing:
        mine = reference if candidate is base else right(_loaded(candidate), candidate.config.batch_size)
        lost, gained = int(np.sum(reference & ~mine)), int(np.sum(~reference & mine))
        bound = drop_bound(lost, gained, n) * 100
        candidate.labelled = {"images": n, "lost": lost, "gained": gained, "top1": round(float(mine.mean()), 4),
                              "drop_bound_points": round(bound, 2), "detectable_points": labelled["detectable_points"]}
        if bound > max_drop:
            candidate.status = "rejected"
            candidate.reason = (f"on {n} labelled images it lost {lost} and gained {gained} against fp32: the drop may be "
                                f"{bound:.1f} points at 95%, over --max-drop {max_drop:g}")


def _loaded(candidate: Candidate):
    if candidate.runner is not None and not candidate.runner._loaded:
        candidate.runner.load()
    return candidate.runner


# --- race -------------------------------------------------------------------------------


def _entrants(passing: list[Candidate]) -> list:
    """An Entrant per candidate that passed: one timed call is one inference of a seeded batch
    at its batch size, whose output must be finite."""
    import numpy as np

    from runtimes.errors import NonFiniteError
    from runtimes.race import Entrant, block_calls_for

    def make_call(candidate: Candidate):
        batch = _noise(candidate.config.batch_size, candidate.runner.spec.crop_size)
        label, runner = candidate.config.label(), candidate.runner

        def call() -> None:
            output = runner.infer(batch)
            if not np.isfinite(output).all():
                raise NonFiniteError(f"{label}: NaN or Inf in the output of a timed call")

        return call

    for candidate in passing:
        # A session closed for want of memory is loaded before each of its blocks and closed after.
        reload = not candidate.runner._loaded
        candidate.entrant = Entrant(
            candidate.config.label(), make_call(candidate), candidate.config.batch_size,
            block_calls_for(candidate.estimate_s), candidate.estimate_s,
            before=candidate.runner.load if reload else None, after=candidate.runner.close if reload else None,
        )
    return [c.entrant for c in passing]


def _race(passing: list[Candidate], args, deadline_s: float, progress: Progress, on_round=None):
    """Race the candidates that passed until ``deadline_s`` (time.monotonic); returns the Race."""
    from runtimes.race import CpuMonitor, Race

    race = Race(_entrants(passing), min_gain=args.min_gain, per_image=args.metric == "throughput",
                max_p99_s=args.max_p99_ms / 1e3 if args.max_p99_ms else None,
                seed=int.from_bytes(os.urandom(4), "little"))

    def report(r: Race) -> None:
        leader = r.leader
        progress.note(f"race round {r.rounds}: {len(r.live)} left, leading {leader.name if leader else '-'}, "
                      f"{max(deadline_s - time.monotonic(), 0):.0f} s left")
        if on_round is not None:
            on_round(r)

    race.run(deadline_s + time.perf_counter() - time.monotonic(), on_round=report, monitor=CpuMonitor())
    for candidate in passing:
        e = candidate.entrant
        if e.status in ("rejected", "eliminated"):
            candidate.status, candidate.reason = e.status, e.reason
    return race


def _decide(racing: list[Candidate], others: list[Candidate], race, args, provider_order: list[str]):
    """(the choice or None, the ranked fallbacks); sets every racing candidate's status and reason.

    ``others`` passed the gate but did not race. Only candidates whose interval against the
    leader lies within --min-gain tie with it, and only a tie is settled by the tie-break; one
    not separated from the leader when the race stopped is "undecided", and the leader stands.
    """
    from runtimes.candidates import tie_break
    from runtimes.race import ratio

    live = [c for c in racing if c.entrant.status == "live"]
    if not live:
        return None, []

    def within(c: Candidate, other: Candidate) -> bool:
        r = ratio(c.entrant, other.entrant)
        return (r is not None and r.rounds >= MIN_ROUNDS and 1 / (1 + args.min_gain) <= r.low
                and r.high <= 1 + args.min_gain)

    measured = [c for c in live if c.entrant.measured]
    if measured:
        leader = next(c for c in measured if c.entrant is race.leader)
        close = [leader, *(c for c in measured if c is not leader and within(c, leader))]
    else:  # no round ran: the screen's and the gate's timing is all there is
        leader = min(live, key=lambda c: _cost(c, args))
        close = [leader]
    choice = min(close, key=lambda c: tie_break(c.config, provider_order))
    choice.status = "chosen"
    choice.reason = (f"fastest that passed ({race.stopped_because} after {race.rounds} rounds)" if choice is leader
                     else f"tied with {leader.config.label()} within --min-gain {args.min_gain:g}; the tie goes to the "
                          "higher precision, then fewer threads, then the bundle's provider order")
    if len(racing) + len(others) == 1:
        choice.reason = "the only candidate that passed the gate"
    elif not measured:
        choice.reason = "no race round fitted in the budget: chosen by the screen's and the gate's timing alone"
    for c in live:
        if c is choice:
            continue
        r = ratio(c.entrant, choice.entrant)
        shown = ("not measured" if r is None else f"{r.value:.2f}x ({r.low:.2f}-{r.high:.2f})" if r.rounds >= MIN_ROUNDS
                 else f"{r.value:.2f}x after {r.rounds} rounds, too few for an interval")
        if within(c, choice):
            c.status, c.reason = "tied", f"within {args.min_gain:g} of the choice: {shown}"
        else:
            c.status, c.versus = "undecided", shown
            c.reason = f"not separated from the choice when the race stopped ({race.stopped_because}): {shown}"

    def rank(c: Candidate) -> tuple:
        r = ratio(c.entrant, choice.entrant) if c.entrant and c.entrant.measured and choice.entrant.measured else None
        return (c.entrant is None, r.value if r else _cost(c, args) / max(_cost(choice, args), 1e-12),
                tie_break(c.config, provider_order))

    # a fallback must pass the gate and keep to --max-p99-ms
    usable = [c for c in [*racing, *others]
              if c is not choice and c.status != "rejected" and not c.reason.startswith("p99 ")]
    return choice, sorted(usable, key=rank)


def _cost(candidate: Candidate, args) -> float:
    """The gate's seconds per call, or per image for the throughput metric."""
    return candidate.estimate_s / (candidate.config.batch_size if args.metric == "throughput" else 1)


def _evidence_warnings(candidates: list[Candidate], race, args) -> list[str]:
    """What the run could not settle, one line each: candidates gated fewer than planned, and
    leaders the race did not separate; then the machine's noise."""
    warnings = []
    gated = [c for c in candidates if c.gate is not None and c.gate["passed"] or c.status == "rejected"]
    if len(gated) < len(candidates):
        screened = sum(1 for c in candidates if c.times and c.gate is None)
        warnings.append(f"gated {len(gated)} of {len(candidates)} candidates in full ({screened} more screened only, "
                        f"{len(candidates) - len(gated) - screened} not run); a larger --budget-s gates them all")
    chosen = next((c for c in candidates if c.status == "chosen"), None)
    undecided = [c for c in candidates if c.status == "undecided"]
    if chosen is not None and undecided:
        shown = "; ".join(f"{c.config.label()}: {c.versus}" for c in undecided)
        warnings.append(f"undecided between {chosen.config.label()} and {len(undecided)} other"
                        f"{'s' if len(undecided) > 1 else ''} after {race.rounds} rounds (their time over the choice's: "
                        f"{shown}); the fastest so far is the choice; a larger --budget-s separates them")
    return warnings + _busy_warnings(race)


def _busy_warnings(race) -> list[str]:
    warnings = []
    if race.busy and max(race.busy) > BUSY_CORES:
        worst = max(race.busy)
        rounds = sum(b > BUSY_CORES for b in race.busy)
        warnings.append(f"the machine was busy: other processes used up to {worst:.1f} CPU cores in {rounds} of "
                        f"{len(race.busy)} race rounds; paired ratios cancel most of it, but re-tune on a quiet machine "
                        "to be sure")
    spreads = [s for e in race.entrants for s in e.spreads]
    if spreads and statistics.median(spreads) > BUSY_SPREAD:
        warnings.append(f"calls varied by {statistics.median(spreads):.0%} within blocks (median interquartile range "
                        "over the median): the timings are noisy")
    return warnings


# --- confirmation in fresh processes -------------------------------------------------------


def _confirm(root: Path, choice, ranked, args, pairs: int, deadline: float, warnings: list[str]) -> dict[str, Any]:
    """Time the choice against the runner-up in ``pairs`` pairs of fresh processes, alternating."""
    if choice is None or not ranked:
        return {"done": False, "why": "nothing to confirm against" if choice else "no choice"}
    runner_up = ranked[0]  # only a tied or undecided runner-up can take the choice: an eliminated one lost with confidence
    if pairs == 0:
        return {"done": False, "why": "the budget leaves no time for fresh processes"}
    per_image = args.metric == "throughput"
    ratios = []
    for i in range(pairs):
        if time.monotonic() + 2 * (CHILD_OVERHEAD_S + CONFIRM_SECONDS) > deadline:
            break
        costs = {}
        for who in ((choice, runner_up) if i % 2 == 0 else (runner_up, choice)):
            seconds, why = _child_seconds(root, who, deadline)
            if seconds is None:
                warnings.append(f"confirmation: {who.config.label()} {why}")
                return {"done": False, "why": f"{who.config.label()} {why}"}
            costs[id(who)] = seconds / (who.config.batch_size if per_image else 1)
        ratios.append(costs[id(runner_up)] / costs[id(choice)])
    if not ratios:
        return {"done": False, "why": "the budget ran out before it"}
    found = statistics.median(ratios)
    swapped = runner_up.status in ("tied", "undecided") and all(r < 1 / (1 + args.min_gain) for r in ratios)
    result = {"done": True, "runner_up": runner_up.config.as_dict(), "pairs": len(ratios),
              "runner_up_over_choice": [round(r, 4) for r in ratios], "median": round(found, 4), "swapped": swapped}
    if swapped:
        warnings.append(f"fresh processes found {runner_up.config.label()} faster than {choice.config.label()} in every "
                        f"pair ({found:.2f}x): it is the choice instead")
    elif found < 1 / (1 + args.min_gain):
        warnings.append(f"fresh processes disagree with the race: {runner_up.config.label()} was {1 / found:.2f}x as "
                        f"fast as {choice.config.label()} in some pairs; the race's choice stands")
    return result


def _child_seconds(root: Path, candidate: Candidate, deadline: float) -> tuple[float | None, str]:
    """(the median call a fresh process timed, "") or (None, what went wrong, in a few words).

    The child may overrun the budget up to a floor sized from this candidate: its imports,
    twice the load measured here (a cold process compiles again), the timed second and a
    few warm-up calls. Past that, it is reported as a timeout, not as a failure."""
    config = candidate.config
    floor = CHILD_OVERHEAD_S + 2 * candidate.load_s + CONFIRM_SECONDS + 5 * candidate.estimate_s
    timeout = max(deadline - time.monotonic(), floor)
    command = [sys.executable, "-m", "runtimes.tune", "--bundle", str(root), "--confirm-child", json.dumps(config.as_dict())]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, (f"timed out in a fresh process after {timeout:.1f} s (its load took {candidate.load_s:.1f} s "
                      "here); a larger --budget-s gives it time")
    try:
        return float(json.loads(proc.stdout.strip().splitlines()[-1])["median_s"]), ""
    except (ValueError, KeyError, IndexError, TypeError):
        lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
        # its own error line, else a traceback's last line (the exception), else its first line
        said = next((line for line in lines if line.startswith("error:")), None) or \
            (lines[-1] if lines and lines[0].startswith("Traceback") else lines[0] if lines else "nothing on stderr")
        return None, f"failed in a fresh process (exit status {proc.returncode}): {said}"


def _confirm_child(root: Path, config_dict: dict[str, Any]) -> int:
    """In a fresh process: load ``config_dict`` as ``runtimes.run --bundle`` would and time it."""
    from runtimes.bundle import open_bundle
    from runtimes.tuned import TUNED, Configuration, Tuned, classifier_for, tuned_attempts

    config = Configuration.from_dict(config_dict)
    with open_bundle(root) as opened:
        attempt = tuned_attempts(opened, Tuned(Path(root) / TUNED, (config,)), {})[0]
        with classifier_for(attempt) as classifier:
            batch = _noise(config.batch_size, classifier.spec.crop_size)
            for _ in range(2):
                classifier.runner.infer(batch)
            times, end = [], time.perf_counter() + CONFIRM_SECONDS
            while time.perf_counter() < end or len(times) < 3:
                t0 = time.perf_counter()
                classifier.runner.infer(batch)
                times.append(time.perf_counter() - t0)
    print(json.dumps({"median_s": statistics.median(times), "calls": len(times)}))
    return 0


# --- the result ------------------------------------------------------------------------------


def _bundle_default(opened, candidates: list[Candidate], cores: int, args) -> Candidate | None:
    """The candidate that is what the bundle runs without tuned.json, where it was tried."""
    from runtimes.candidates import GPU_PROVIDERS

    provider = opened.providers[0]
    batch = min(args.batch_sizes or [1])
    for c in candidates:
        k = c.config
        if (k.provider, k.precision, k.batch_size) == (provider, opened.default_precision, batch) and \
                k.threads in ((None,) if provider in GPU_PROVIDERS else (cores,)) and k.hint in (None, "LATENCY"):
            return c
    return None


def _speedup(default: Candidate | None, choice: Candidate | None, per_image: bool) -> dict[str, Any] | None:
    from runtimes.race import ratio

    if default is None:
        return None
    if default is choice:
        return {"default": default.config.as_dict(), "ratio": 1.0}
    if choice is not None and default.times and choice.times and (default.entrant is None or not default.entrant.measured):
        # not raced: the screen's fastest calls, each timed in its own moment, with no interval
        def cost(c: Candidate) -> float:
            return c.estimate_s / (c.config.batch_size if per_image else 1)

        return {"default": default.config.as_dict(), "ratio": round(cost(default) / cost(choice), 3),
                "from": "the fastest calls of each in the screen and the gate (not raced together)"}
    if choice is None or default.entrant is None or not default.entrant.measured:
        return {"default": default.config.as_dict(), "ratio": None, "why": default.reason or "not timed"}
    r = ratio(default.entrant, choice.entrant)
    if r is None:
        return {"default": default.config.as_dict(), "ratio": None, "why": "not timed in the same rounds"}
    return {"default": default.config.as_dict(), "ratio": round(r.value, 3),
            "ci": [round(r.low, 3), round(r.high, 3) if r.high != float("inf") else None], "rounds": r.rounds}


def _protocol(args, race, pairs: int) -> dict[str, Any]:
    from runtimes import race as racing

    return {
        "budget_s": args.budget_s,
        "metric": args.metric,
        "min_gain": args.min_gain,
        "gate": "reference replay at the candidate's batch size; runtimes.tolerances per precision; NaN or Inf rejects",
        "rounds": race.rounds,
        "stopped_because": race.stopped_because,
        "block_s": racing.BLOCK_S,
        "warmup_calls": 1,
        "gap_s": racing.GAP_S,
        "confidence": racing.CONFIDENCE,
        "interval": "Student's t on the log of per-round paired ratios",
        "min_rounds": racing.MIN_ROUNDS,
        "strikes": racing.STRIKES,
        "confirm_pairs": pairs,
        "confirm_seconds": CONFIRM_SECONDS,
        "others_cpu_cores_per_round": [round(b, 2) for b in race.busy],
    }


def _ordered(candidates: list[Candidate]) -> list[Candidate]:
    def key(c: Candidate) -> tuple:
        e = c.entrant
        return (STATUS_ORDER.index(c.status) if c.status in STATUS_ORDER else len(STATUS_ORDER),
                e.median_cost if e is not None and e.measured else float("inf"))

    return sorted(candidates, key=key)


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _markdown(record: dict[str, Any], path: Path, written: bool = True) -> str:
    device = record["device"]
    lines = [f"{device['cpu']} ({', '.join(device['cpu_flags'])}), {device['cores']} cores"
             + (f", GPU {', '.join(device['gpu'])}" if device["gpu"] else "")
             + f"; metric {record['metric']}, {record['seconds']:.0f} s of a {record['protocol']['budget_s']:g} s budget, "
             f"{record['protocol']['rounds']} rounds ({record['protocol']['stopped_because']})", "",
             f"| configuration | gate | p50 ms | p99 ms | {'per-image cost ' if record['metric'] == 'throughput' else ''}"
             "vs choice (99% CI) | status | reason |",
             "|---|---|---|---|---|---|---|"]
    for c in record["candidates"]:
        label = _label(c)
        gate = "" if c["gate"] is None else ("pass" if c["gate"]["passed"] else "FAIL")
        t = c.get("timing") or {}
        vs = ""
        if c["status"] == "chosen":
            vs = "1.00x"
        elif "ratio_to_choice" in t:
            low, high = t["ratio_ci"]
            vs = (f"{t['ratio_to_choice']:.2f}x ({low:.2f}-{high:.2f})" if high is not None and t["rounds"] >= MIN_ROUNDS
                  else f"{t['ratio_to_choice']:.2f}x ({t['rounds']} rounds: no interval yet)")
        p50 = f"{t['median_ms']:.2f}" if t else ""
        p99 = f"{t['p99_ms']:.2f}" if t else ""
        lines.append(f"| {label} | {gate} | {p50} | {p99} | {vs} | {c['status']} | {_cell(c['reason'])} |")
    lines.append("")
    labelled = next((c["labelled"] for c in record["candidates"] if c.get("labelled")), None)
    if labelled:
        lines.append(f"labelled: {labelled['images']} images, compared with fp32 image by image; with no image "
                     f"differing they bound a drop only to {labelled['detectable_points']:.1f} points at 95%")
    choice = record["choice"]
    if choice is None:
        if any(c["reason"].startswith("p99 ") for c in record["candidates"]):
            why = "every candidate that gives PyTorch's answers here exceeded --max-p99-ms"
        elif any(c["status"] == "rejected" for c in record["candidates"]):
            why = "no candidate gives PyTorch's answers here"
        else:
            why = "no candidate could run here"
        lines.append(f"no choice: {why}; " + (f"the evidence is in {path}" if written else f"{path} was kept"))
    else:
        lines.append(f"choice: {_label(choice)}; " + (f"written to {path}" if written else f"not written: {path} was kept"))
        speedup = record["speedup_vs_default"]
        if speedup and speedup.get("ratio"):
            ci = speedup.get("ci")
            interval = f" ({ci[0]:.2f}-{ci[1]:.2f})" if ci and ci[1] is not None else ""
            lines.append(f"{speedup['ratio']:.2f}x{interval} the bundle's default, {_label(speedup['default'])}"
                         + (" (by their fastest calls: the default was not raced)" if "from" in speedup else ""))
        elif speedup:
            lines.append(f"the bundle's default, {_label(speedup['default'])}: {speedup.get('why', 'not timed')}")
        confirmation = record["confirmation"]
        if confirmation.get("done"):
            pairs = f"{confirmation['pairs']} pair{'s' if confirmation['pairs'] != 1 else ''}"
            lines.append(f"confirmed in {pairs} of fresh processes: the runner-up "
                         f"{_label(confirmation['runner_up'])} took {confirmation['median']:.2f}x the choice's time")
        else:
            lines.append(f"not confirmed in fresh processes: {confirmation['why']}")
    return "\n".join(lines)


def _label(config: dict[str, Any]) -> str:
    from runtimes.tuned import Configuration

    return Configuration(config["provider"], config["precision"], config["batch_size"], config.get("threads"),
                         config.get("hint")).label()


def _print_plan(args, candidates: list[Candidate], skipped: list[Candidate], reference, pairs: int, out) -> None:
    seeded = sum(len(x) for x in reference.inputs)
    plan = {
        "dry_run": True,
        "choice": None,
        "candidates": [{**c.config.as_dict(), "status": "planned", "reason": ""} for c in candidates]
        + [{**c.config.as_dict(), "status": "skipped", "reason": c.reason} for c in skipped],
        "plan": {"budget_s": args.budget_s, "metric": args.metric, "to_gate": len(candidates), "dropped": len(skipped),
                 "reference": {"seeded_rows": seeded, "images": len(reference.images)}, "confirm_pairs": pairs},
    }
    if args.json:
        print(json.dumps(plan, indent=2), file=out)
        return
    print(f"{len(candidates)} candidates, {len(skipped)} dropped; budget {args.budget_s:g} s, metric {args.metric}", file=out)
    for i, c in enumerate(candidates, 1):
        print(f"  {i:>3}. {c.config.label()}", file=out)
    for c in skipped:
        print(f"  dropped: {c.config.label()}: {c.reason}", file=out)
    print(
        f"plan: gate each candidate ({seeded} seeded rows and {len(reference.images)} images at its batch size, "
        f"against PyTorch's logits); race those that pass in interleaved rounds until one is left, the rest tie "
        f"within {args.min_gain:g}, or the budget is spent; confirm the winner against the runner-up in {pairs} pairs "
        "of fresh processes; write tuned.json",
        file=out,
    )


def _plot(record: dict[str, Any], path: Path) -> None:
    """Write :func:`figure` as a PNG, atomically."""
    import io

    import matplotlib.pyplot as plt

    from runtimes.atomic import write_bytes

    fig = figure(record)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    write_bytes(path, buffer.getvalue())


def figure(record: dict[str, Any]):
    """A bar per candidate: its p50 with the 99% interval of its ratio to the choice; rejected
    ones hatched, with their reason, so a fast-but-wrong one is visibly refused."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [c for c in record["candidates"] if c.get("timing") or (c["status"] == "rejected" and c.get("gate"))]
    chosen = next((c for c in rows if c["status"] == "chosen"), None)
    key = "cost_ms" if record["metric"] == "throughput" else "median_ms"  # what the ratios compare
    base = chosen["timing"][key] if chosen else None
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(rows) + 1.6))
    colors = {"chosen": "tab:green", "tied": "tab:olive", "eliminated": "tab:gray"}
    for y, c in enumerate(rows):
        t = c.get("timing") or {}
        value = t.get(key)
        if c["status"] == "rejected":  # at its own p50 if it was timed, else as wide as the choice
            value = value or base or 1.0
            ax.barh(y, value, color="white", edgecolor="tab:red", hatch="//")
            ax.text(value, y, f"  rejected: {c['reason'][:90]}", va="center", fontsize=7, color="tab:red")
            continue
        error, end = None, value
        if base and t.get("ratio_ci") and t["ratio_ci"][1] is not None and t["rounds"] >= MIN_ROUNDS:
            low, high = (r * base for r in t["ratio_ci"])
            error, end = [[max(value - low, 0)], [max(high - value, 0)]], max(high, value)
        ax.barh(y, value, color=colors.get(c["status"], "tab:blue"), xerr=error, capsize=3)
        ax.text(end, y, f"  {c['status']}", va="center", fontsize=7)
    ax.set_yticks(range(len(rows)), [_label(c) for c in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"{'ms per image' if key == 'cost_ms' else 'p50 ms per call'} "
                  "(bars: 99% interval of the paired ratio to the choice)")
    ax.set_title(f"runtimes.tune on {record['device']['cpu']}, {record['device']['cores']} cores: "
                 f"{'choice ' + _label(record['choice']) if record['choice'] else 'no candidate passed'}", fontsize=9)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    run_cli(main)
