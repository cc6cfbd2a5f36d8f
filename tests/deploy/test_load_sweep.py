"""``python -m deploy.load --sweep``: deploy.sweep's rules on made-up windows and answers, then sweeps
against real servers: deploy.serve, and one that answers wrong on every Nth request."""

from __future__ import annotations

import itertools
import json
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from deploy import sweep, sweep_report
from deploy.load import main
from deploy.v2_client import ClientError
from runtimes.tolerances import FP32, INT8
from tests.deploy.serving import REPO, start_server

WRONG_EVERY = 5
# Levels 1 and 2, three windows of 0.2 s each: the rules run, the clock hardly does.
TINY = ["--concurrency", "1,2", "--window-s", "0.2", "--min-windows", "3", "--max-windows", "3"]


def _window(rate: float, seconds: float = 1.0) -> sweep.Window:
    return sweep.Window(seconds, (10.0,) * round(rate * seconds))


def _settle(rates, **limits):
    rates = iter(rates)
    windows, stable = sweep.settle(lambda: _window(next(rates)), **limits)
    return [w.images_per_s for w in windows], stable


def test_windows_that_agree_within_10_percent_stop_early():
    assert _settle([50, 100, 104, 98, 300], min_windows=3, max_windows=8) == ([50, 100, 104, 98], True)
    assert _settle([100, 110, 105], min_windows=3, max_windows=8) == ([100, 110, 105], True)  # 10 <= 10.5


def test_windows_that_disagree_are_unstable_after_max_windows():
    assert _settle(itertools.cycle([100, 112, 105]), min_windows=3, max_windows=8) == (
        [100, 112, 105, 100, 112, 105, 100, 112], False)  # 12 > 10% of 105


def test_figures_pool_the_windows_and_give_the_per_window_range():
    windows = [sweep.Window(1.0, (10.0, 20.0, 30.0)), sweep.Window(2.0, (40.0,) * 4)]
    got = sweep.figures(windows)
    assert (got["images_per_s"], got["images_per_s_range"]) == (2.33, [2.0, 3.0])
    assert (got["p50_ms"], got["p50_ms_range"]) == (40.0, [20.0, 40.0])
    assert (got["p99_ms"], got["p99_ms_range"]) == (40.0, [30.0, 40.0])
    assert sweep.figures([sweep.Window(1.0, ())])["p99_ms"] is None
    settled = sweep.figures(windows[1:], spread=windows)  # the figure from the agreeing windows, the range from all
    assert (settled["images_per_s"], settled["images_per_s_range"]) == (2.0, [2.0, 3.0])
    assert (settled["p50_ms"], settled["p50_ms_range"]) == (40.0, [20.0, 40.0])


def _row(concurrency, rate, p99, errors=0, wrong=0):
    return {"concurrency": concurrency, "images_per_s": rate, "p99_ms": p99, "errors": errors, "wrong": wrong}


def test_the_knee_is_the_fastest_level_whose_p99_is_within_the_bound():
    rows = [_row(1, 50, 20), _row(2, 80, 40), _row(4, 95, 90), _row(8, 99, 150), _row(16, 97, 300)]
    assert sweep.knee(rows, 100)["concurrency"] == 4
    assert sweep.knee(rows, 200)["concurrency"] == 8
    rows[2] = _row(4, 95, 90, wrong=1)  # fast, within the bound, but wrong: not a knee
    assert sweep.knee(rows, 100)["concurrency"] == 2


def test_no_knee_when_no_level_is_within_the_bound():
    assert sweep.knee([_row(1, 50, 120), _row(2, 60, 180), _row(4, 0, None)], 100) is None


def _answers(tolerance):
    reference = np.array([[5.0, 1.0, 0.0], [0.0, 4.0, 1.0]])
    return sweep.Answers(["a.jpg", "b.jpg"], [None, None], reference, labels=["red", "green", "blue"],
                         tolerance=tolerance)


def test_an_answer_is_wrong_by_top1_by_the_precisions_tolerance_or_by_its_form():
    answers = _answers(FP32)
    assert answers.check(1, [[0.0, 4.0, 1.0]]) is None
    assert answers.check(1, [[0.0, 4.0, 1.0 + 1e-4]]) is None  # within atol 1e-4 on the probabilities
    assert answers.check(1, [[1.0, 0.0, 4.0]]).startswith("b.jpg: top-1 blue")  # rolled: another image's class
    assert "probability of" in answers.check(0, [[5.0, 1.2, 0.0]])  # same top-1, beyond the tolerance
    assert "shape [2, 3]" in answers.check(0, [[5.0, 1.0, 0.0]] * 2)
    assert "NaN" in answers.check(0, [[5.0, np.nan, 0.0]])
    int8 = _answers(INT8)  # no elementwise bound: top-1 alone
    assert int8.check(0, [[3.0, 2.0, 0.0]]) is None and int8.check(0, [[1.0, 2.0, 0.0]]).startswith("a.jpg: top-1")


def _served(how: str):
    """A made-up model of three images, each its own class, and a server for it that answers ``how``: "right",
    "mixed up" (each request gets the answer of the request before it) or "wrong" (the next image's class)."""
    reference = np.eye(3) * 5
    answers = sweep.Answers(["a", "b", "c"], [np.full((1, 1), i, np.float32) for i in range(3)], reference,
                            labels=["red", "green", "blue"], tolerance=FP32)
    sent, last, lock = [], [0], threading.Lock()

    def infer(batch):
        with lock:
            index = int(batch[0, 0])
            sent.append(index)
            answer = {"right": index, "mixed up": last[0], "wrong": (index + 1) % 3}[how]
            last[0] = index
        time.sleep(0.002)
        return reference[answer][None]

    return answers, infer, sent


@pytest.mark.parametrize("how", ["right", "mixed up", "wrong"])
def test_every_request_takes_the_next_image_and_every_answer_is_checked(how):
    answers, infer, sent = _served(how)
    level = sweep.run_level(infer, answers, protocol="fake", concurrency=2, window_s=0.05, min_windows=2,
                            max_windows=2)
    tally = level.tally
    assert len(level.windows) == 2 and tally.errors == 0
    assert tally.responses == len(sent) and sorted(set(sent)) == [0, 1, 2]  # every image sent, every answer counted
    if how == "right":
        assert tally.wrong == 0
    elif how == "mixed up":  # caught only because consecutive requests carry different images
        assert tally.wrong > 0.9 * tally.responses and "top-1" in tally.first_wrong
    else:  # the untimed first requests and those in flight at the end are checked too
        assert tally.wrong == tally.responses


@pytest.mark.parametrize(("arguments", "message"), [
    (["--http", "127.0.0.1:1", "--protocols", "rest-json,grpc"],
     "error: --protocols grpc needs --grpc HOST:PORT; give it, or leave grpc out of --protocols\n"),
    ([], "error: --sweep needs the server's addresses: --http HOST:PORT and/or --grpc HOST:PORT\n"),
])
def test_a_missing_address_is_one_line(arguments, message):
    done = subprocess.run([sys.executable, "-m", "deploy.load", "--sweep", *arguments], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr, done.stdout) == (2, message, "")


def test_help_shows_the_sweep_flags(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and "agree within 10% (default: 3)" in out and "--max-p99-ms" in out


def test_a_dead_address_fails_before_anything_is_measured(demo_export):
    with socket.socket() as bound:  # bound, not listening: a connection is refused
        bound.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{bound.getsockname()[1]}"
        with pytest.raises(ClientError, match=f"^the first request to grpc {address} failed: "):
            main(["--sweep", "--grpc", address, "--protocols", "grpc", "--model", str(demo_export.path), *TINY])


@pytest.fixture(scope="module")
def servers(server, demo_export, tmp_path_factory):
    """deploy.serve on the demo model (the session's, shared with test_serve), and the wrong server on the same model."""
    wrong = start_server(tmp_path_factory.mktemp("sweep") / "wrong.log", "--every", str(WRONG_EVERY), "--model",
                         str(demo_export.path), "--max-batch", "8", module="tests.deploy.wrong_server")
    yield server, wrong
    wrong.stop()


def test_a_sweep_of_the_real_server_finds_no_wrong_answer(servers, demo_export, tmp_path, capsys):
    real, _ = servers
    report_path, plot_path = tmp_path / "sweep.json", tmp_path / "sweep.png"
    arguments = ["--sweep", "--http", real.http, "--grpc", real.grpc, "--model", str(demo_export.path), *TINY,
                 "--json", str(report_path)]
    if sweep_report.has_matplotlib():
        arguments += ["--plot", str(plot_path)]
    status = main(arguments)
    out, err = capsys.readouterr()
    report = json.loads(report_path.read_text())
    assert status == 0 and err == "", err
    assert (report["wrong"], report["errors"]) == (0, 0)
    assert [(r["protocol"], r["concurrency"]) for r in report["levels"]] == [
        (p, c) for p in ("rest-binary", "rest-json", "grpc") for c in (1, 2)]
    for row in [report["in_process"], *report["levels"]]:
        assert row["responses"] > row["concurrency"] and row["windows"] == 3, row
        assert row["images_per_s_range"][0] <= row["images_per_s"] <= row["images_per_s_range"][1], row
        assert row["p99_ms_range"][0] <= row["p99_ms"] <= row["p99_ms_range"][1], row
    lines = out.splitlines()
    assert lines[1].startswith("in-process, one caller: ") and lines[2].split()[:3] == ["protocol", "conc", "img/s"]
    assert [line.split()[:2] for line in lines[3:9]] == [[p, c] for p in ("rest-binary", "rest-json", "grpc")
                                                         for c in ("1", "2")]
    assert all(line.startswith(f"knee {p}: ") for line, p in zip(lines[9:12], ("rest-binary", "rest-json", "grpc")))
    if sweep_report.has_matplotlib():
        assert plot_path.read_bytes().startswith(b"\x89PNG")


def test_a_sweep_counts_the_wrong_answers_and_exits_1(servers, demo_export, tmp_path, capsys):
    _, wrong = servers
    report_path = tmp_path / "wrong.json"
    status = main(["--sweep", "--http", wrong.http, "--grpc", wrong.grpc, "--protocols", "rest-binary,grpc",
                   "--model", str(demo_export.path), *TINY, "--concurrency", "2", "--json", str(report_path)])
    out, err = capsys.readouterr()
    report = json.loads(report_path.read_text())
    assert status == 1, err
    assert report["errors"] == 0 and report["in_process"]["wrong"] == 0
    # every response was checked: the server rolled requests 5, 10, 15... over both protocols
    assert report["wrong"] == report["responses"] // WRONG_EVERY > 0
    assert all(row["wrong"] > 0 and "top-1" in row["first_wrong"] for row in report["levels"]), report["levels"]
    assert [line.split()[-3] for line in out.splitlines()[3:5]] == [str(row["wrong"]) for row in report["levels"]]
    assert err.count("\n") == 1 and err.startswith(
        f"wrong answers: {report['wrong']} of {report['responses']} responses differ from the in-process answers; "
        "first at rest-binary concurrency 2: "), err
