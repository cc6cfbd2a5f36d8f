"""Which of several configurations is fastest, measured so that a noisy, shared 2-core
machine cannot fake the answer. numpy-free; used by ``runtimes.tune``.

The protocol:

- The race runs in rounds. Each round runs a short block of calls for every entrant
  still in, in a fresh random order; each block starts after a short idle gap (another
  runtime's threads stop spinning) and an untimed warm-up call. A block's cost is the
  median of its calls (per image, for throughput), so a rare spike inside it moves nothing.
- Each entrant is compared with the current leader (the lowest median cost over the
  rounds) as the ratio of their costs in the same round: slow spells of the machine hit
  both and cancel. Over the rounds those ratios give a confidence interval (Student's t
  on their logarithms, ``CONFIDENCE``).
- An entrant is eliminated once its interval lies wholly above ``1 + min_gain`` at
  ``STRIKES`` consecutive rounds, never before ``MIN_ROUNDS`` rounds: one slower by
  less than that is a tie, settled by the caller's tie-break, not by noise. One whose interval lies wholly within ``1 +- min_gain`` of the
  leader is a tie. The race stops when one entrant is left, when the rest are ties, or
  at the deadline.

``clock`` and ``sleep`` are injectable: the tests race synthetic entrants of known speed
on a virtual clock, thousands of times, and count how often the fastest is eliminated.
"""

from __future__ import annotations

import math
import os
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from runtimes.errors import ToolkitError

MIN_ROUNDS = 3
STRIKES = 2  # found slower at this many consecutive looks: one look can be a fluke of peeking
CONFIDENCE = 0.99
BLOCK_S = 0.1  # the timed part of a block, about
MIN_BLOCK_CALLS, MAX_BLOCK_CALLS = 3, 30
GAP_S = 0.02
# Two-sided 99% quantiles of Student's t for 1..30 degrees of freedom (standard tables);
# beyond 30, the normal quantile with the first Cornish-Fisher correction is within 0.4%.
_T99 = (63.657, 9.925, 5.841, 4.604, 4.032, 3.707, 3.499, 3.355, 3.250, 3.169, 3.106, 3.055, 3.012, 2.977, 2.947,
        2.921, 2.898, 2.878, 2.861, 2.845, 2.831, 2.819, 2.807, 2.797, 2.787, 2.779, 2.771, 2.763, 2.756, 2.750)
_Z99 = 2.5758


def t99(df: int) -> float:
    """The two-sided 99% quantile of Student's t with ``df`` degrees of freedom."""
    if df <= len(_T99):
        return _T99[df - 1]
    return _Z99 + (_Z99**3 + _Z99) / (4 * df)


@dataclass(frozen=True)
class Ratio:
    """An entrant's cost over another's: the geometric mean of their per-round ratios and its interval."""

    value: float
    low: float
    high: float
    rounds: int


@dataclass
class Entrant:
    """One configuration in the race. ``call`` runs one timed inference (and raises a
    ToolkitError for a wrong one: a NaN in a timed call rejects it too)."""

    name: str
    call: Callable[[], None]
    items_per_call: int = 1  # the batch size: throughput compares cost per image
    block_calls: int = 5
    estimate_s: float = 0.05  # seconds per call before any is timed (the gate's figure)
    before: Callable[[], None] | None = None  # untimed, before each block (load a session closed to save memory)
    after: Callable[[], None] | None = None  # untimed, after each block
    costs: list[float | None] = field(default_factory=list)  # per round; None: not run that round
    call_times: list[float] = field(default_factory=list)
    spreads: list[float] = field(default_factory=list)  # per block: (p75 - p25) / median of its calls
    status: str = "live"  # live, eliminated, rejected
    strikes: int = 0  # consecutive rounds found slower than the leader with confidence
    reason: str = ""

    @property
    def measured(self) -> list[float]:
        return [c for c in self.costs if c is not None]

    @property
    def median_cost(self) -> float:
        return statistics.median(self.measured) if self.measured else math.inf


def block_calls_for(seconds_per_call: float) -> int:
    """Calls per block: about ``BLOCK_S`` of them, at least 3 so the median means something."""
    if seconds_per_call <= 0:
        return MAX_BLOCK_CALLS
    return max(MIN_BLOCK_CALLS, min(MAX_BLOCK_CALLS, round(BLOCK_S / seconds_per_call)))


def ratio(a: Entrant, b: Entrant) -> Ratio | None:
    """``a``'s cost over ``b``'s, paired by round; None before two shared rounds."""
    logs = [math.log(x / y) for x, y in zip(a.costs, b.costs) if x is not None and y is not None and x > 0 and y > 0]
    if len(logs) < 2:
        return Ratio(math.exp(logs[0]), 0.0, math.inf, 1) if logs else None
    mean, sd = statistics.fmean(logs), statistics.stdev(logs)
    half = t99(len(logs) - 1) * sd / math.sqrt(len(logs))
    return Ratio(math.exp(mean), math.exp(mean - half), math.exp(mean + half), len(logs))


class Race:
    """Interleaved rounds over ``entrants`` until one is left, the rest tie, or ``deadline``."""

    def __init__(
        self,
        entrants: list[Entrant],
        *,
        min_gain: float = 0.03,
        per_image: bool = False,
        max_p99_s: float | None = None,
        seed: int = 0,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], None] = time.sleep,
        gap_s: float = GAP_S,
        warmup_calls: int = 1,
        min_rounds: int = MIN_ROUNDS,
    ) -> None:
        self.entrants = entrants
        self.min_gain, self.per_image, self.max_p99_s = min_gain, per_image, max_p99_s
        self.rng = random.Random(seed)
        self.clock, self.sleep, self.gap_s, self.warmup_calls = clock, sleep, gap_s, warmup_calls
        self.min_rounds = max(2, min_rounds)  # never on a single round
        self.rounds = 0
        self.stopped_because = ""
        self.busy: list[float] = []  # per round: CPU cores other processes used meanwhile

    @property
    def live(self) -> list[Entrant]:
        return [e for e in self.entrants if e.status == "live"]

    @property
    def leader(self) -> Entrant | None:
        """The live entrant with the lowest geometric-mean cost over the rounds every live one
        ran: paired like the ratios, so a slow spell in some rounds favours nobody."""
        live = self.live
        if not live:
            return None
        shared = [i for i in range(self.rounds) if all(i < len(e.costs) and e.costs[i] for e in live)]
        if not shared:
            return min(live, key=lambda e: e.median_cost)
        return min(live, key=lambda e: sum(math.log(e.costs[i]) for i in shared))

    def round_seconds(self) -> float:
        """What the next round should take, from what the last ones did."""
        return sum(
            self.gap_s + (self.warmup_calls + e.block_calls) * (statistics.median(e.call_times) if e.call_times else e.estimate_s)
            for e in self.live
        )

    def run(self, deadline: float, on_round: Callable[["Race"], None] | None = None, monitor=None) -> None:
        """Race until a stop condition; a round that would end past ``deadline`` is not started."""
        while True:
            if len(self.live) <= 1:
                self.stopped_because = "one left" if self.live else "none left"
                return
            if self.rounds >= self.min_rounds and self.all_tied():
                self.stopped_because = "the rest tie with the leader"
                return
            if self.clock() + self.round_seconds() > deadline:
                self.stopped_because = "the budget was spent"
                return
            if monitor is not None:
                monitor.start()
            self.run_round()
            if monitor is not None:
                self.busy.append(monitor.stop())
            self.eliminate()
            if on_round is not None:
                on_round(self)

    def run_round(self) -> None:
        order = self.live
        self.rng.shuffle(order)
        for entrant in self.entrants:
            entrant.costs.append(None)
        for entrant in order:
            if entrant.before is not None:
                entrant.before()
            self.sleep(self.gap_s)
            try:
                for _ in range(self.warmup_calls):
                    entrant.call()
                times = []
                for _ in range(entrant.block_calls):
                    started = self.clock()
                    entrant.call()
                    times.append(self.clock() - started)
            except ToolkitError as exc:
                entrant.status, entrant.reason = "rejected", f"failed in a timed call: {exc}"
                continue
            finally:
                if entrant.after is not None:
                    entrant.after()
            times.sort()
            median = statistics.median(times)
            entrant.call_times += times
            entrant.spreads.append((times[(3 * len(times)) // 4] - times[len(times) // 4]) / median if median else 0.0)
            entrant.costs[-1] = median / (entrant.items_per_call if self.per_image else 1)
        self.rounds += 1

    def eliminate(self) -> None:
        """Drop any entrant over ``max_p99_s``, then each one slower than the leader by more
        than ``min_gain`` with confidence (closer than that is a tie, for the tie-break to settle)."""
        if self.rounds < self.min_rounds:
            return
        for entrant in self.live:
            if self.max_p99_s is not None and over_p99(entrant.call_times, self.max_p99_s):
                entrant.status = "eliminated"
                entrant.reason = f"p99 {p99(entrant.call_times) * 1e3:.1f} ms is over --max-p99-ms {self.max_p99_s * 1e3:g}"
        leader = self.leader
        for entrant in self.live:
            if entrant is leader:
                continue
            r = ratio(entrant, leader)
            entrant.strikes = entrant.strikes + 1 if r is not None and r.low > 1 + self.min_gain else 0
            if entrant.strikes >= STRIKES:
                entrant.status = "eliminated"
                entrant.reason = (f"slower than {leader.name} with {CONFIDENCE:.0%} confidence after {r.rounds} rounds: "
                                  f"{r.value:.2f}x ({r.low:.2f}-{r.high:.2f})")

    def all_tied(self) -> bool:
        """Whether every other entrant is within ``min_gain`` of the leader, with confidence."""
        leader = self.leader
        for entrant in self.live:
            if entrant is leader:
                continue
            r = ratio(entrant, leader)
            if r is None or r.low < 1 / (1 + self.min_gain) or r.high > 1 + self.min_gain:
                return False
        return True


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank); inf for none."""
    if not values:
        return math.inf
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def p99(times: list[float]) -> float:
    return percentile(times, 0.99)


def over_p99(times: list[float], limit: float) -> bool:
    """Whether more than 1% of ``times`` exceed ``limit``, counting at least two: one spike in
    the few dozen calls a slow candidate makes in a few rounds is not its 99th percentile."""
    over = sum(t > limit for t in times)
    return over >= 2 and over > 0.01 * len(times)


class CpuMonitor:
    """CPU cores that other processes used while ours ran (Linux: /proc/stat less /proc/self/stat)."""

    def __init__(self) -> None:
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._start: tuple[float, float, float] | None = None

    @staticmethod
    def available() -> bool:
        return os.path.exists("/proc/stat") and os.path.exists("/proc/self/stat")

    def _sample(self) -> tuple[float, float, float]:
        with open("/proc/stat") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
        busy = sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)  # all but idle and iowait
        with open("/proc/self/stat") as fh:
            ours = fh.read().rsplit(")", 1)[1].split()
        return time.monotonic(), float(busy), float(int(ours[11]) + int(ours[12]))  # utime + stime

    def start(self) -> None:
        self._start = self._sample() if self.available() else None

    def stop(self) -> float:
        """Cores used by others since ``start``: 1.0 is one core kept busy the whole time."""
        if self._start is None:
            return 0.0
        now, busy, ours = self._sample()
        then, busy0, ours0 = self._start
        elapsed = max(now - then, 1e-6)
        return max(0.0, ((busy - busy0) - (ours - ours0)) / self._tick / elapsed)
