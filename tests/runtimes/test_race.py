"""The interleaved-rounds race that ``runtimes.tune`` uses: synthetic entrants of known speed
on a virtual clock (hundreds of seeded races, with jitter, spikes and machine-wide drift),
a few real sleep-based races, its stop rules, and the CPU monitor."""

from __future__ import annotations

import math
import os
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest

from runtimes import race as race_module
from runtimes.errors import NonFiniteError
from runtimes.race import MIN_ROUNDS, STRIKES, CpuMonitor, Entrant, Race, ratio, t99

BASE_S = 0.01
RATIOS = (1.0, 1.05, 1.2, 2.0)
RACES = 500
HARSH_RACES = 300
FIRST_ELIMINATION = MIN_ROUNDS + STRIKES - 1  # a strike per look, the first look after MIN_ROUNDS rounds


class VirtualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@dataclass(frozen=True)
class Noise:
    jitter: float = 0.05  # sigma of the lognormal factor on every call
    spike_p: float = 0.01  # chance of a call taking U(2, 6) times as long
    drift_amp: float = 0.3  # the machine's speed factor is exp(amp * sin(2 pi t / period + phase))
    drift_period_s: float = 20.0


GENTLE = Noise()
HARSH = Noise(jitter=0.15, spike_p=0.05, drift_amp=0.3, drift_period_s=2.0)


def synthetic(name: str, speed_ratio: float, clock: VirtualClock, rng: random.Random, noise: Noise, drift) -> Entrant:
    """An entrant whose call advances the virtual clock by base * ratio * drift * jitter (* a rare spike)."""

    def call() -> None:
        seconds = BASE_S * speed_ratio * drift(clock.now) * rng.lognormvariate(0.0, noise.jitter)
        if rng.random() < noise.spike_p:
            seconds *= rng.uniform(2.0, 6.0)
        clock.now += seconds

    return Entrant(name, call, estimate_s=BASE_S * speed_ratio)


@dataclass
class Outcome:
    race: Race
    out_at: dict[str, int]  # entrant name: the round it was eliminated at

    def entrant(self, speed_ratio: float) -> Entrant:
        return next(e for e in self.race.entrants if e.name == f"x{speed_ratio:g}")


def race_once(seed: int, noise: Noise, ratios=RATIOS, budget_s: float = 10.0, min_gain: float = 0.03) -> Outcome:
    rng = random.Random(seed)
    clock = VirtualClock()
    phase = rng.uniform(0.0, 2 * math.pi)

    def drift(t: float) -> float:
        return math.exp(noise.drift_amp * math.sin(2 * math.pi * t / noise.drift_period_s + phase))

    entrants = [synthetic(f"x{r:g}", r, clock, rng, noise, drift) for r in ratios]
    out_at: dict[str, int] = {}

    def on_round(r: Race) -> None:
        for e in r.entrants:
            if e.status != "live" and e.name not in out_at:
                out_at[e.name] = r.rounds

    race = Race(entrants, min_gain=min_gain, seed=seed, clock=clock, sleep=clock.sleep)
    race.run(budget_s, on_round=on_round)
    return Outcome(race, out_at)


@pytest.fixture(scope="module")
def gentle() -> list[Outcome]:
    return [race_once(seed, GENTLE) for seed in range(RACES)]


def test_twice_as_slow_goes_out_at_the_first_round_allowed(gentle):
    """The 2.0 entrant is eliminated in every race, at the first round the rules allow."""
    rounds = [o.out_at.get("x2") for o in gentle]
    assert all(o.entrant(2.0).status == "eliminated" for o in gentle)
    assert max(rounds) <= FIRST_ELIMINATION, sorted(set(rounds))


def test_a_fifth_slower_never_ends_as_leader(gentle):
    """The 1.20 entrant never leads when a race ends: it is eliminated in every race."""
    leaders = [o.race.leader.name for o in gentle]
    assert "x1.2" not in leaders
    assert all(o.entrant(1.2).status == "eliminated" for o in gentle)


def test_five_percent_slower_never_wins_alone(gentle):
    """Against min_gain 0.03, the 1.05 entrant never ends as the sole survivor, nor leads: it
    is eliminated, or still in and either more than min_gain behind (not a tie the tie-break
    could hand it) or reported as a tie; mostly eliminated."""
    for o in gentle:
        slow, best = o.entrant(1.05), o.entrant(1.0)
        assert not (slow.status == "live" and best.status != "live"), o.out_at
        assert o.race.leader is best
        if slow.status == "live":
            assert ratio(slow, best).value > 1.03 or o.race.stopped_because == "the rest tie with the leader"
    eliminated = sum(o.entrant(1.05).status == "eliminated" for o in gentle)
    print(f"1.05 eliminated in {eliminated} of {len(gentle)} races")
    assert eliminated >= 0.5 * len(gentle)


def test_the_true_best_is_never_eliminated(gentle):
    """Over the seeded races, the 1.00 entrant is never eliminated (the count is printed)."""
    false = [i for i, o in enumerate(gentle) if o.entrant(1.0).status != "live"]
    stops = {o.race.stopped_because for o in gentle}
    print(f"\nfalse eliminations of the true best, {GENTLE}: {len(false)} of {len(gentle)} races; stops: {stops}")
    assert false == []


def test_harsh_noise_never_eliminates_the_true_best():
    """With jitter 0.15, 5% spikes and drift fast enough to change within a few rounds, the 1.00
    entrant is still never eliminated, and the 2.0 one always is."""
    outcomes = [race_once(seed, HARSH) for seed in range(HARSH_RACES)]
    false = [i for i, o in enumerate(outcomes) if o.entrant(1.0).status != "live"]
    print(f"\nfalse eliminations of the true best, {HARSH}: {len(false)} of {len(outcomes)} races")
    assert false == []
    assert all(o.entrant(2.0).status == "eliminated" for o in outcomes)
    assert all(o.race.leader.name in ("x1", "x1.05") for o in outcomes)


def test_pairing_cancels_a_slowdown_shared_by_a_round():
    """Two entrants whose costs move together round by round, by up to 3x, have a paired ratio
    of exactly their speed ratio with no width at all."""
    shared = [1.0, 3.0, 0.5, 2.0, 1.2]
    a, b = Entrant("a", lambda: None), Entrant("b", lambda: None)
    a.costs = [2 * f for f in shared]
    b.costs = list(shared)
    r = ratio(a, b)
    assert r.rounds == 5
    assert r.value == pytest.approx(2.0) and r.low == pytest.approx(2.0) and r.high == pytest.approx(2.0)


def test_ratio_skips_rounds_not_shared():
    """A round one of the two sat out is left out of the pairing; one shared round gives no bound."""
    a, b = Entrant("a", lambda: None), Entrant("b", lambda: None)
    a.costs, b.costs = [2.0, None, 4.0], [1.0, 1.0, None]
    assert ratio(a, b) == race_module.Ratio(2.0, 0.0, math.inf, 1)
    a.costs, b.costs = [None, 1.0], [1.0, None]
    assert ratio(a, b) is None


def _t_quantile(df: int, p: float = 0.995) -> float:
    """Student's t quantile by integrating its density (Simpson) and bisection."""
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(x: float) -> float:
        steps = 4000
        h = x / steps
        f = [math.exp(log_c - (df + 1) / 2 * math.log1p((i * h) ** 2 / df)) for i in range(steps + 1)]
        return 0.5 + h / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))

    low, high = 0.0, 100.0
    for _ in range(50):
        mid = (low + high) / 2
        low, high = (mid, high) if cdf(mid) < p else (low, mid)
    return (low + high) / 2


@pytest.mark.parametrize("df", [1, 2, 3, 5, 10, 30, 31, 40, 60, 120, 1000])
def test_t99_matches_students_t(df):
    """The table (1-30 degrees of freedom) and its large-df approximation are within 0.4% of the
    two-sided 99% quantile of Student's t, computed here from its density."""
    assert t99(df) == pytest.approx(_t_quantile(df), rel=4e-3)


def sleeper(name: str, seconds: float) -> Entrant:
    return Entrant(name, lambda: time.sleep(seconds), estimate_s=seconds)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_real_sleeps_eliminate_the_slower(seed):
    """On the real clock, time.sleep of 3 ms against 6 ms: the 6 ms one is eliminated and the 3 ms one
    leads, well inside a 3 s budget."""
    fast, slow = sleeper("3ms", 0.003), sleeper("6ms", 0.006)
    race = Race([fast, slow], seed=seed)
    race.run(time.perf_counter() + 3.0)
    assert slow.status == "eliminated", (race.stopped_because, ratio(slow, fast))
    assert race.leader is fast and race.stopped_because == "one left"
    assert race.rounds <= FIRST_ELIMINATION + 3
    assert ratio(slow, fast).value == pytest.approx(2.0, rel=0.25)


@pytest.mark.parametrize("seed,spike_p", [(seed, 0.05) for seed in range(8)] + [(0, 0.0)])
def test_the_deadline_is_kept(seed, spike_p):
    """Two entrants that take turns being 10% slower, round by round, never separate nor tie
    (min_gain 0): the race runs until the next round would not fit and stops for the budget,
    past the deadline by less than one block when rare spikes slow its last round, and not
    at all without them."""
    rng = random.Random(seed)
    clock = VirtualClock()

    def alternating(odd_slow: bool):
        calls = [0]

        def call() -> None:
            round_index = calls[0] // 6  # a block: one warm-up call and 5 timed ones
            calls[0] += 1
            seconds = BASE_S * (1.1 if round_index % 2 == odd_slow else 1.0)
            clock.now += seconds * (rng.uniform(2.0, 6.0) if rng.random() < spike_p else 1.0)

        return call

    entrants = [Entrant("a", alternating(True)), Entrant("b", alternating(False))]
    deadline = 5.0
    race = Race(entrants, min_gain=0.0, seed=seed, clock=clock, sleep=clock.sleep)
    race.run(deadline)
    block = max(race.gap_s + (race.warmup_calls + e.block_calls) * statistics.median(e.call_times) for e in entrants)
    assert race.stopped_because == "the budget was spent"
    assert all(e.status == "live" for e in entrants)
    assert clock.now <= deadline + (block if spike_p else 0.0)
    assert clock.now + race.round_seconds() > deadline
    assert race.rounds > 10


def test_the_rest_tie_before_the_deadline():
    """Two entrants of the same speed and little noise, min_gain 0.05: the race stops as a tie
    at the first round a tie may be called, long before the deadline, with nobody eliminated."""
    rng = random.Random(7)
    clock = VirtualClock()
    noise = Noise(jitter=0.005, spike_p=0.0, drift_amp=0.0)
    entrants = [synthetic(f"e{i}", 1.0, clock, rng, noise, lambda t: 1.0) for i in range(2)]
    race = Race(entrants, min_gain=0.05, seed=7, clock=clock, sleep=clock.sleep)
    race.run(100.0)
    assert race.stopped_because == "the rest tie with the leader"
    assert race.rounds == MIN_ROUNDS
    assert clock.now < 10.0
    assert all(e.status == "live" for e in entrants)


@pytest.mark.parametrize("min_rounds", [1, MIN_ROUNDS])
def test_never_dropped_on_a_single_round(min_rounds):
    """Even a 10x slower entrant is not eliminated after one round (min_rounds below 2 is raised
    to 2), nor before MIN_ROUNDS by default; it goes out as soon as the rules allow."""
    rng = random.Random(3)
    clock = VirtualClock()
    noise = Noise(jitter=0.01, spike_p=0.0, drift_amp=0.0)
    fast = synthetic("fast", 1.0, clock, rng, noise, lambda t: 1.0)
    slow = synthetic("slow", 10.0, clock, rng, noise, lambda t: 1.0)
    status_by_round: list[str] = []
    race = Race([fast, slow], seed=3, clock=clock, sleep=clock.sleep, min_rounds=min_rounds)
    race.run(100.0, on_round=lambda r: status_by_round.append(slow.status))
    assert status_by_round[0] == "live"
    allowed = max(2, min_rounds)
    assert status_by_round[: allowed - 1] == ["live"] * (allowed - 1)
    assert status_by_round.index("eliminated") + 1 == allowed + STRIKES - 1
    assert fast.status == "live"


def test_a_toolkit_error_rejects_the_entrant_and_the_race_goes_on():
    """A NonFiniteError in a timed call rejects that entrant with the reason (its after() still
    runs); the others race on and the slow one is eliminated."""
    clock = VirtualClock()
    calls = {"bad": 0}
    hooks = {"before": 0, "after": 0}

    def steady(seconds: float):
        def call() -> None:
            clock.now += seconds

        return call

    def bad_call() -> None:
        calls["bad"] += 1
        clock.now += 0.01
        if calls["bad"] == 6 + 4:  # round 2's fourth call: the third timed one
            raise NonFiniteError("bad: NaN or Inf in the output of a timed call")

    good = Entrant("good", steady(0.01))
    bad = Entrant("bad", bad_call, before=lambda: hooks.__setitem__("before", hooks["before"] + 1),
                  after=lambda: hooks.__setitem__("after", hooks["after"] + 1))
    slow = Entrant("slow", steady(0.02))
    race = Race([good, bad, slow], seed=0, clock=clock, sleep=clock.sleep)
    race.run(100.0)
    assert bad.status == "rejected"
    assert bad.reason == "failed in a timed call: bad: NaN or Inf in the output of a timed call"
    assert bad.costs[0] is not None and bad.costs[1:] == [None] * (race.rounds - 1)
    assert hooks == {"before": 2, "after": 2}
    assert slow.status == "eliminated" and good.status == "live"
    assert race.stopped_because == "one left" and race.rounds > 2


def test_max_p99_eliminates_a_heavy_tail():
    """An entrant with the lowest median but a p99 call over max_p99_s is eliminated for it; a
    slower steady one under the limit stays in and leads."""
    clock = VirtualClock()
    count = [0]

    def tail_call() -> None:
        count[0] += 1
        clock.now += 0.05 if count[0] % 7 == 0 else 0.005

    def steady_call() -> None:
        clock.now += 0.008

    tail, steady = Entrant("tail", tail_call), Entrant("steady", steady_call)
    race = Race([tail, steady], max_p99_s=0.02, seed=0, clock=clock, sleep=clock.sleep)
    race.run(100.0)
    assert tail.median_cost < steady.median_cost
    assert tail.status == "eliminated"
    assert tail.reason == "p99 50.0 ms is over --max-p99-ms 20"
    assert steady.status == "live" and race.leader is steady
    assert race.rounds <= MIN_ROUNDS + 1  # out once two of its calls are over the limit


def test_one_spike_is_not_a_p99_over_the_limit():
    """A single slow call among a fast entrant's few dozen is not its 99th percentile: it stays in."""
    clock = VirtualClock()
    count = [0]

    def one_spike() -> None:
        count[0] += 1
        clock.now += 0.05 if count[0] == 9 else 0.005

    def steady() -> None:
        clock.now += 0.008

    spiky, slow = Entrant("spiky", one_spike), Entrant("steady", steady)
    race = Race([spiky, slow], max_p99_s=0.02, seed=0, clock=clock, sleep=clock.sleep)
    race.run(100.0)
    assert spiky.status == "live" and race.leader is spiky and slow.status == "eliminated"


def _cpu_seconds(pid: int | str) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy_seconds() -> float:
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


needs_proc = pytest.mark.skipif(not CpuMonitor.available(), reason="no /proc/stat: CpuMonitor reports 0 here")


@needs_proc
def test_cpu_monitor_counts_a_busy_process():
    """A busy-loop subprocess shows up: CpuMonitor reports at least the cores that process used
    (by its own /proc/<pid>/stat), which is most of a core unless the machine is full."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        monitor = CpuMonitor()
        started, spun = time.monotonic(), _cpu_seconds(spinner.pid)
        monitor.start()
        time.sleep(1.0)
        busy = monitor.stop()
        spinner_cores = (_cpu_seconds(spinner.pid) - spun) / (time.monotonic() - started)
    finally:
        spinner.kill()
        spinner.wait()
    print(f"\nCpuMonitor with a busy loop: {busy:.2f} cores (the loop itself: {spinner_cores:.2f})")
    assert spinner_cores >= 0.3
    assert busy >= spinner_cores - 0.1


@needs_proc
def test_cpu_monitor_leaves_out_our_own_cpu():
    """While this process spins and others do whatever they do, CpuMonitor reports the machine's
    busy cores less ours: about one core below the machine's whole figure."""
    monitor = CpuMonitor()
    started, machine, ours = time.monotonic(), _machine_busy_seconds(), time.process_time()
    monitor.start()
    while time.monotonic() - started < 1.0:
        pass
    others = monitor.stop()
    elapsed = time.monotonic() - started
    machine_cores = (_machine_busy_seconds() - machine) / elapsed
    our_cores = (time.process_time() - ours) / elapsed
    print(f"\nCpuMonitor while we spin: {others:.2f} cores; the machine {machine_cores:.2f}, we {our_cores:.2f}")
    assert our_cores >= 0.5
    assert others == pytest.approx(machine_cores - our_cores, abs=0.15)
