"""A closed-loop load sweep against a v2 server that checks every answer: the library behind
``python -m deploy.load --sweep``.

The loop. At each concurrency level of each protocol, ``concurrency`` client threads each
send one image, wait for its answer, check it, and send the next (a closed loop, as an
application's request threads would). Every request takes the next image of a cycle
through several different ones, so a server that hands one request's answer to another is
caught, which a benchmark sending one tensor over and over cannot see.

Windows. After one untimed request per client (connections open, the session warm) the
level runs in windows of ``window_s`` seconds; a response belongs to the window in which it
arrived. From ``min_windows`` windows on, the level stops as soon as the throughputs of the
last ``min_windows`` windows agree: their range is at most ``AGREE`` (10%) of their median.
At ``max_windows`` it stops anyway and is reported unstable. Throughput alone decides: a
window's p99 rests on its few slowest requests and moves by more than 10% on a steady server.

Figures and intervals. A level's figures come from the windows that agreed (every window
when it is unstable): throughput is the answers in them (right or wrong; errors are not
answers) over their seconds, p50 and p99 the nearest-rank percentiles of every request
latency in them. Each interval ``[low-high]`` is the range of the same figure computed
window by window, over every window of the level, the ones the rule passed over included:
the spread the measurement saw. Were the windows independent draws and their number fixed
in advance, the range of n of them would hold the median window's figure with probability
1 - 2^(1-n): 75% for 3 windows, 94% for 5, 99% for 8. Neither quite holds (a slow spell of a
shared machine can span two windows, and a level stops when its windows agree, so a level
stable at 3 windows has a throughput range within 10% partly by construction): read the
interval as a description of the run, not as a confidence interval. A bootstrap over single
requests was not used: it would give narrower intervals, and wrong ones, since in a closed
loop a slow spell slows every client at once and consecutive latencies are far from
independent.

Answers. Every response (each protocol's first request, sent before the model is loaded
here so that a wrong address fails at once, each client's untimed one, and those in flight
when a level stops, included) is compared with the in-process answer for the same image: the same model file run one
image at a time by a ``Classifier`` in this process (``Answers``). A response is wrong if
its shape is not [1, classes], it holds NaN or Inf, its top-1 class is not the reference's
(unless the reference's top two probabilities tie within twice the tolerance, where
``runtimes.parity`` allows it too), or a softmax probability differs beyond the model
precision's tolerance, ``|p - ref| <= atol + rtol * |ref|`` (``runtimes.tolerances``).
An int8 model's tolerance has no elementwise bound and its 97% top-1 share bounds what
quantization loses against fp32; here both sides run the same int8 file, so quantization is
not in the difference, and every int8 response's top-1 must equal the reference's.
Errors (an exception, a status other than 200) are counted apart from wrong answers; the
first message of each is kept.

The knee of a protocol is its level with the highest throughput whose p99 is within
``max_p99_ms`` and that had no error and no wrong answer; none when no level is.

The table and the plot of a report: ``deploy.sweep_report``.
"""

from __future__ import annotations

import itertools
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtimes.errors import ImageError
from runtimes.tolerances import Tolerance

AGREE = 0.10  # the windows' throughputs agree when their range is at most this share of their median
DEFAULT_CONCURRENCY = (1, 2, 4, 8, 16)
DEFAULT_WINDOW_S = 5.0
DEFAULT_MIN_WINDOWS = 3
# A level takes 3 to 8 windows: at 5 s, 15 to 40 s, and the default sweep of 15 levels 4 to
# 10 minutes. A level that has not settled in 8 windows is not going to in 20.
DEFAULT_MAX_WINDOWS = 8
# The classic bound of a response a person takes as immediate, and about 5 times one image's
# in-process latency on the 2-core development machine (17.6 ms for the demo GoogLeNet): a
# request may queue behind about four others and its level still count for the knee.
DEFAULT_MAX_P99_MS = 100.0
MAX_IMAGES = 64  # the sample set has 18; a folder of thousands would only cost memory and start-up
IN_PROCESS = "in-process"

Infer = Callable[[np.ndarray], np.ndarray]


class Answers:
    """The images a sweep sends, preprocessed, and the in-process answer a response for each must match."""

    def __init__(self, names: Sequence[str], inputs: Sequence[np.ndarray], reference: np.ndarray, *,
                 labels: Sequence[str], tolerance: Tolerance, output_kind: str = "logits") -> None:
        self.names, self.inputs, self.labels = tuple(names), tuple(inputs), tuple(labels)
        self.tolerance, self.output_kind = tolerance, output_kind
        self.probs = self.probabilities(np.asarray(reference))

    @staticmethod
    def inputs_of(images: Sequence[Path], spec) -> list[np.ndarray]:
        """Each image file preprocessed for ``spec``, as a batch of one."""
        from runtimes import preprocess

        inputs = []
        for path in images:
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise ImageError(f"cannot read {path}: {exc.strerror or exc}") from None
            inputs.append(np.ascontiguousarray(preprocess.load(data, spec, str(path))[None], dtype=np.float32))
        return inputs

    @classmethod
    def reference(cls, images: Sequence[Path], classifier, tolerance: Tolerance) -> "Answers":
        """``images`` preprocessed with ``classifier``'s spec, and its answer for each, one image at a
        time, as the sweep sends them (a batch of one computes what the server computes)."""
        spec = classifier.spec
        inputs = cls.inputs_of(images, spec)
        reference = np.concatenate([classifier.runner.infer(x) for x in inputs])
        return cls([p.name for p in images], inputs, reference, labels=spec.labels, tolerance=tolerance,
                   output_kind=spec.output_kind)

    def __len__(self) -> int:
        return len(self.inputs)

    def probabilities(self, output: np.ndarray) -> np.ndarray:
        from runtimes.classifier import softmax

        output = np.asarray(output, dtype=np.float64)
        return softmax(output) if self.output_kind == "logits" else output

    def rule(self) -> str:
        """The rule a response is judged by, in words."""
        tol = self.tolerance
        if not tol.elementwise:
            return "top-1 equal to in-process (int8: no elementwise bound)"
        return f"top-1 equal to in-process, softmax probabilities within atol {tol.atol:g} + rtol {tol.rtol:g}"

    def check(self, index: int, output: Any) -> str | None:
        """None if ``output`` is a right answer for image ``index``, else why it is wrong, in one line."""
        name, want = self.names[index], self.probs[index]
        try:
            values = np.asarray(output, dtype=np.float64)
        except (TypeError, ValueError):
            return f"{name}: the answer is not numbers"
        if values.shape != (1, want.size):
            return f"{name}: an answer of shape {list(values.shape)}, expected [1, {want.size}]"
        if not np.isfinite(values).all():
            return f"{name}: the answer holds NaN or Inf"
        got = self.probabilities(values)[0]
        tol = self.tolerance
        top, ref_top = int(np.argmax(got)), int(np.argmax(want))
        if top != ref_top and not self._tie(want):
            return (f"{name}: top-1 {self.labels[top]} ({got[top]:.4f}); "
                    f"in-process {self.labels[ref_top]} ({want[ref_top]:.4f})")
        if tol.elementwise:
            excess = np.abs(got - want) - (tol.atol + tol.rtol * np.abs(want))
            worst = int(np.argmax(excess))
            if excess[worst] > 0:
                return (f"{name}: probability of {self.labels[worst]} {got[worst]:.6f}; in-process "
                        f"{want[worst]:.6f} (beyond atol {tol.atol:g} + rtol {tol.rtol:g})")
        return None

    def _tie(self, want: np.ndarray) -> bool:
        """Whether the reference's top two are closer than the tolerance can tell apart (never for int8)."""
        tol = self.tolerance
        if not tol.elementwise or want.size < 2:
            return False
        second, first = np.sort(want)[-2:]
        return bool(first - second <= 2 * (tol.atol + tol.rtol * first))


@dataclass(frozen=True)
class Window:
    """The requests answered in one window of a level: how long it lasted and each one's latency."""

    seconds: float
    latencies_ms: tuple[float, ...]

    @property
    def images_per_s(self) -> float:
        return len(self.latencies_ms) / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Tally:
    """Every response of a level: answers (right or wrong), errors, wrong ones, the first message of each."""

    responses: int = 0
    errors: int = 0
    wrong: int = 0
    first_error: str | None = None
    first_wrong: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def answer(self, why_wrong: str | None) -> None:
        with self.lock:
            self.responses += 1
            if why_wrong is not None:
                self.wrong += 1
                self.first_wrong = self.first_wrong or why_wrong[:300]

    def error(self, exc: BaseException) -> None:
        with self.lock:
            self.errors += 1
            self.first_error = self.first_error or " ".join(f"{type(exc).__name__}: {exc}".split())[:300]


def agreeing(rates: Sequence[float], agree: float = AGREE) -> bool:
    """Whether window throughputs ``rates`` agree: their range is at most ``agree`` of their median."""
    return max(rates) - min(rates) <= agree * statistics.median(rates)


def settle(next_window: Callable[[], Window], *, min_windows: int, max_windows: int,
           agree: float = AGREE) -> tuple[list[Window], bool]:
    """Windows from ``next_window()`` until the last ``min_windows`` agree (stable: True) or there are
    ``max_windows`` (False). Pure, so the rule is tested on made-up windows."""
    windows: list[Window] = []
    while True:
        windows.append(next_window())
        if len(windows) >= min_windows and agreeing([w.images_per_s for w in windows[-min_windows:]], agree):
            return windows, True
        if len(windows) >= max_windows:
            return windows, False


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` percentile: a latency some request really took, and the pooled one always
    lies within the range of the per-window ones (interpolated ones can fall just outside)."""
    return float(np.percentile(values, q, method="inverted_cdf"))


def figures(windows: Sequence[Window], spread: Sequence[Window] | None = None) -> dict[str, Any]:
    """Throughput, p50 and p99 over ``windows`` pooled, each with the range of its values window by window
    over ``spread`` (default: ``windows``; it should hold them, so that each figure lies within its range).

    A percentile is None where no request was answered; so is its range where no window had one.
    """
    seconds = sum(w.seconds for w in windows)
    pooled = [ms for w in windows for ms in w.latencies_ms]
    spread = windows if spread is None else spread
    rates = [w.images_per_s for w in spread]
    result: dict[str, Any] = {
        "images_per_s": round(len(pooled) / seconds, 2) if seconds > 0 else 0.0,
        "images_per_s_range": [round(min(rates), 2), round(max(rates), 2)],
    }
    for q in (50, 99):
        per_window = [percentile(w.latencies_ms, q) for w in spread if w.latencies_ms]
        result[f"p{q}_ms"] = round(percentile(pooled, q), 2) if pooled else None
        result[f"p{q}_ms_range"] = [round(min(per_window), 2), round(max(per_window), 2)] if per_window else None
    return result


@dataclass
class Level:
    """One protocol at one concurrency: its windows, whether they settled, and every response's tally."""

    protocol: str
    concurrency: int
    windows: list[Window]
    stable: bool
    used: int  # the figures come from the last ``used`` windows
    tally: Tally

    def as_dict(self) -> dict[str, Any]:
        t = self.tally
        return {"protocol": self.protocol, "concurrency": self.concurrency, **figures(self.windows[-self.used:], self.windows),
                "responses": t.responses, "errors": t.errors, "wrong": t.wrong,
                "first_error": t.first_error, "first_wrong": t.first_wrong,
                "windows": len(self.windows), "windows_used": self.used, "stable": self.stable,
                "window_images_per_s": [round(w.images_per_s, 2) for w in self.windows]}


def run_level(infer: Infer, answers: Answers, *, protocol: str, concurrency: int, window_s: float, min_windows: int,
              max_windows: int, tally: Tally | None = None,
              on_window: Callable[[int, Window], None] | None = None) -> Level:
    """``concurrency`` threads in a closed loop on ``infer`` until the windows settle (see the module docstring).

    ``tally`` may hold responses counted before (the probe). Every response is checked,
    including each client's untimed first one and those in flight when the level stops.
    """
    tally = tally or Tally()
    turn = itertools.count()  # next() on it is atomic: each request takes the next image
    timed: list[float] = []
    lock = threading.Lock()
    stop = threading.Event()
    ready = threading.Barrier(concurrency + 1)

    def one(record: bool) -> None:
        index = next(turn) % len(answers)
        start = time.perf_counter()
        try:
            output = infer(answers.inputs[index])
        except Exception as exc:  # noqa: BLE001 - counted and reported, the run goes on
            tally.error(exc)
            return
        elapsed_ms = (time.perf_counter() - start) * 1e3
        tally.answer(answers.check(index, output))
        if record:
            with lock:
                timed.append(elapsed_ms)

    def client() -> None:
        try:
            one(record=False)  # opens this thread's connection, untimed
        finally:
            ready.wait()
        while not stop.is_set():
            one(record=True)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    ready.wait()
    begin, done = time.perf_counter(), 0

    def next_window() -> Window:
        nonlocal begin, done
        time.sleep(max(0.0, begin + window_s - time.perf_counter()))
        with lock:  # a response appended before this belongs to this window
            end = time.perf_counter()
            latencies, timed[:] = tuple(timed), []
        window, begin, done = Window(end - begin, latencies), end, done + 1
        if on_window is not None:
            on_window(done, window)
        return window

    try:
        windows, stable = settle(next_window, min_windows=min_windows, max_windows=max_windows)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    return Level(protocol, concurrency, windows, stable, min_windows if stable else len(windows), tally)


def knee(levels: Sequence[dict[str, Any]], max_p99_ms: float) -> dict[str, Any] | None:
    """The level with the highest throughput whose p99 is within ``max_p99_ms`` and that had no error
    and no wrong answer (the lowest concurrency of equals); None when no level is."""
    within = [level for level in levels if level["p99_ms"] is not None and level["p99_ms"] <= max_p99_ms
              and not level["errors"] and not level["wrong"]]
    return max(within, key=lambda level: level["images_per_s"], default=None)


def probe(clients: dict[str, tuple[Infer, str]], first: np.ndarray) -> dict[str, np.ndarray]:
    """Each protocol's answer to one request of ``first`` (the first image), sent before the model is even
    loaded here: a ClientError line if one fails, so a wrong address fails in a second, not after minutes."""
    from deploy.v2_client import first_answer

    return {protocol: first_answer(infer, target, first) for protocol, (infer, target) in clients.items()}


def sweep(clients: dict[str, tuple[Infer, str]], answers: Answers, in_process: Infer, *, probes: dict[str, Any],
          concurrency: Sequence[int], window_s: float, min_windows: int, max_windows: int, max_p99_ms: float,
          progress=None) -> dict[str, Any]:
    """The report of a sweep over ``clients`` (protocol -> (infer, target)) at each ``concurrency``, after the
    in-process figure on the same images; ``progress`` (runtimes.progress.Progress) is told each level.

    ``probes`` are the answers of :func:`probe` for image 0: checked too, and counted in each protocol's first level.
    """
    tallies = {}
    for protocol, output in probes.items():
        tallies[protocol] = Tally()
        tallies[protocol].answer(answers.check(0, output))
    settings = {"window_s": window_s, "min_windows": min_windows, "max_windows": max_windows}

    def level(infer: Infer, protocol: str, c: int, tally: Tally | None = None) -> dict[str, Any]:
        def note(k: int, window: Window) -> None:
            progress.note(f"{protocol} concurrency {c}: window {k}, {window.images_per_s:.1f} img/s")

        if progress is not None:
            progress.step(f"{protocol} concurrency {c}")
        on_window = note if progress is not None else None
        return run_level(infer, answers, protocol=protocol, concurrency=c, tally=tally, on_window=on_window,
                         **settings).as_dict()

    local = level(in_process, IN_PROCESS, 1)  # one caller: the runtime's own threads already use every core
    levels = [level(infer, protocol, c, tallies.pop(protocol, None)) for protocol, (infer, _) in clients.items()
              for c in concurrency]
    knees = {}
    for protocol in clients:
        best = knee([row for row in levels if row["protocol"] == protocol], max_p99_ms)
        knees[protocol] = None if best is None else {k: best[k] for k in ("concurrency", "images_per_s", "p99_ms")}
    return {
        "images": list(answers.names),
        "rule": answers.rule(),
        "settings": {**settings, "agree": AGREE, "max_p99_ms": max_p99_ms, "concurrency": list(concurrency),
                     "protocols": list(clients)},
        "intervals": "[low, high]: the range of the figure window by window, over every window of the level",
        "in_process": local,
        "levels": levels,
        "knees": knees,
        "responses": sum(row["responses"] for row in levels),
        "errors": sum(row["errors"] for row in levels),
        "wrong": sum(row["wrong"] for row in levels),
    }
