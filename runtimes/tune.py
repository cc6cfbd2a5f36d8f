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
   configurations within ``tune_gate.LEAD_FACTOR`` of the fastest.
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
from pathlib import Path
from typing import Any

from runtimes import __version__
from runtimes.cli import EXIT_FAILED, EXIT_PARITY_FAILED, EXIT_USER_ERROR, csv_list, points, run_cli
from runtimes.progress import Progress
from runtimes.race import MIN_ROUNDS  # fewer paired rounds give no interval worth printing
from runtimes import tune_gate as gating
from runtimes import tune_report as report
from runtimes.tune_gate import TuneError

DEFAULT_BUDGET_S = 120.0
DEFAULT_MIN_GAIN = 0.03
DEFAULT_MAX_DROP = 1.0  # points of top-1, with --labelled
CONFIRM_PAIRS = 2
CONFIRM_SECONDS = 1.0  # timed calls per confirming process
CHILD_OVERHEAD_S = 1.5  # start-up, imports and load of one confirming process (2-core Xeon: 0.4-1.1 s)
BUSY_CORES = 0.5  # other processes using more than this many cores during a round: warn
BUSY_SPREAD = 0.15  # a median within-block interquartile range above this share of the median: warn
STATUS_ORDER = ("chosen", "tied", "undecided", "eliminated", "rejected", "skipped")



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
        candidates = [gating.Candidate(c) for c in configs]
        skipped = [gating.Candidate(d.configuration, "skipped", d.reason) for d in dropped]
        reference = Reference.load(opened.reference)
        pairs = _confirm_pairs(args.budget_s)
        if args.dry_run:
            report.print_plan(args, candidates, skipped, reference, pairs, out)
            return 0
        labelled = gating.read_labelled(args, opened) if args.labelled else None
        warnings: list[str] = []
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        if load > cpu["physical_cores"]:
            warnings.append(f"the machine was busy before tuning began (load average {load:.1f} on "
                            f"{cpu['physical_cores']} cores): timings will be noisier")
        progress = stack.enter_context(Progress(2 * len(candidates) + 2 + bool(labelled), err))
        runners = stack.enter_context(contextlib.ExitStack())  # every loaded session, closed at the end
        gate_deadline = deadline - _reserve_s(pairs) - 0.2 * args.budget_s
        gating.screen_all(candidates, opened, reference, runners, gate_deadline, progress, args)
        gating.gate_leaders(candidates, opened, reference, runners, (gate_deadline, deadline - _reserve_s(pairs)), progress, args)
        if labelled is not None:
            progress.step(f"labelled: {labelled['images']} images against fp32")
            gating.labelled_check(candidates, labelled, args.max_drop, opened)
        racing = gating.leaders([c for c in candidates if c.status == "passed"], args)
        progress.step(f"race: {len(racing)} candidates")
        race = _race(racing, args, deadline - _reserve_s(pairs), progress)
        gating.gate_the_rest(candidates, opened, reference, runners, deadline - _reserve_s(pairs), progress, args)
        if labelled is not None:
            gating.labelled_check(candidates, labelled, args.max_drop, opened)
        late = [c for c in candidates if c.status == "passed" and c not in racing]
        if late and race.rounds == 0:  # the race measured nothing: all by the screen's and the gate's timing
            racing = gating.leaders(racing + late, args)
            late = [c for c in late if c not in racing]
            race = _race(racing, args, time.monotonic(), progress)
        for c in late:
            gating.not_raced(c, racing[0], args)
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
            "repaired": report.repaired_models(opened.models),
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
    print(json.dumps(record, indent=2) if args.json else report.markdown(record, path, written=kept is None), file=out)
    if args.plot:
        try:
            report.plot(record, args.plot)
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


# --- labelled images ------------------------------------------------------------------


# --- race -------------------------------------------------------------------------------


def _entrants(passing: list[gating.Candidate]) -> list:
    """An Entrant per candidate that passed: one timed call is one inference of a seeded batch
    at its batch size, whose output must be finite."""
    import numpy as np

    from runtimes.errors import NonFiniteError
    from runtimes.race import Entrant, block_calls_for

    def make_call(candidate: gating.Candidate):
        batch = gating.noise(candidate.config.batch_size, candidate.runner.spec.crop_size)
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


def _race(passing: list[gating.Candidate], args, deadline_s: float, progress: Progress, on_round=None):
    """Race the candidates that passed until ``deadline_s`` (time.monotonic); returns the Race."""
    from runtimes.race import CpuMonitor, Race

    race = Race(_entrants(passing), min_gain=args.min_gain, per_image=args.metric == "throughput",
                max_p99_s=args.max_p99_ms / 1e3 if args.max_p99_ms else None,
                seed=int.from_bytes(os.urandom(4), "little"))

    def say_round(r: Race) -> None:
        leader = r.leader
        progress.note(f"race round {r.rounds}: {len(r.live)} left, leading {leader.name if leader else '-'}, "
                      f"{max(deadline_s - time.monotonic(), 0):.0f} s left")
        if on_round is not None:
            on_round(r)

    race.run(deadline_s + time.perf_counter() - time.monotonic(), on_round=say_round, monitor=CpuMonitor())
    for candidate in passing:
        e = candidate.entrant
        if e.status in ("rejected", "eliminated"):
            candidate.status, candidate.reason = e.status, e.reason
    return race


def _decide(racing: list[gating.Candidate], others: list[gating.Candidate], race, args, provider_order: list[str]):
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

    def within(c: gating.Candidate, other: gating.Candidate) -> bool:
        r = ratio(c.entrant, other.entrant)
        return (r is not None and r.rounds >= MIN_ROUNDS and 1 / (1 + args.min_gain) <= r.low
                and r.high <= 1 + args.min_gain)

    measured = [c for c in live if c.entrant.measured]
    if measured:
        leader = next(c for c in measured if c.entrant is race.leader)
        close = [leader, *(c for c in measured if c is not leader and within(c, leader))]
    else:  # no round ran: the screen's and the gate's timing is all there is
        leader = min(live, key=lambda c: gating.cost(c, args))
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

    def rank(c: gating.Candidate) -> tuple:
        r = ratio(c.entrant, choice.entrant) if c.entrant and c.entrant.measured and choice.entrant.measured else None
        return (c.entrant is None, r.value if r else gating.cost(c, args) / max(gating.cost(choice, args), 1e-12),
                tie_break(c.config, provider_order))

    # a fallback must pass the gate and keep to --max-p99-ms
    usable = [c for c in [*racing, *others]
              if c is not choice and c.status != "rejected" and not c.reason.startswith("p99 ")]
    return choice, sorted(usable, key=rank)


def _evidence_warnings(candidates: list[gating.Candidate], race, args) -> list[str]:
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


def _child_seconds(root: Path, candidate: gating.Candidate, deadline: float) -> tuple[float | None, str]:
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
            batch = gating.noise(config.batch_size, classifier.spec.crop_size)
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


def _bundle_default(opened, candidates: list[gating.Candidate], cores: int, args) -> gating.Candidate | None:
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


def _speedup(default: gating.Candidate | None, choice: gating.Candidate | None, per_image: bool) -> dict[str, Any] | None:
    from runtimes.race import ratio

    if default is None:
        return None
    if default is choice:
        return {"default": default.config.as_dict(), "ratio": 1.0}
    if choice is not None and default.times and choice.times and (default.entrant is None or not default.entrant.measured):
        # not raced: the screen's fastest calls, each timed in its own moment, with no interval
        def cost(c: gating.Candidate) -> float:
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


def _ordered(candidates: list[gating.Candidate]) -> list[gating.Candidate]:
    def key(c: gating.Candidate) -> tuple:
        e = c.entrant
        return (STATUS_ORDER.index(c.status) if c.status in STATUS_ORDER else len(STATUS_ORDER),
                e.median_cost if e is not None and e.measured else float("inf"))

    return sorted(candidates, key=key)


if __name__ == "__main__":
    run_cli(main)
