"""Runners and classifiers shared between threads give each thread its own answers, and
loading a model never swallows what other threads print."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from runtimes import preprocess
from runtimes.adapters import create_runner
from runtimes.classifier import Classifier
from samples.generate import IMAGES_DIR
from tests.helpers import provider_param

REPO = Path(__file__).resolve().parents[2]
SAMPLES = sorted(IMAGES_DIR.glob("*.jpg"))


PROVIDERS = [provider_param("cpu"), provider_param("openvino"), provider_param("opencv")]


def _run_threads(count: int, work) -> list:
    results, errors = [None] * count, []

    def target(i: int) -> None:
        try:
            results[i] = work(i)
        except Exception as exc:  # surfaced below, with the thread's number
            errors.append(f"thread {i}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


@pytest.mark.parametrize("threads", [2, 8])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_shared_runner_answers_each_thread(demo_export, provider, threads):
    spec = demo_export.spec
    batches = [preprocess.stack([preprocess.load(p.read_bytes(), spec) for p in SAMPLES[i % 6 :: 6][:2]]) for i in range(threads)]
    with create_runner(provider, demo_export.path) as runner:
        serial = [runner.infer(b) for b in batches]
        rounds = _run_threads(threads, lambda i: [runner.infer(batches[i]) for _ in range(5)])
    for i, outputs in enumerate(rounds):
        for out in outputs:
            np.testing.assert_allclose(out, serial[i], rtol=1e-5, atol=1e-5, err_msg=f"thread {i} got another answer")


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_shared_classifier_answers_each_thread(demo_export, provider):
    with Classifier(demo_export.path, provider, batch_size=3) as clf:
        orders = [SAMPLES[i:] + SAMPLES[:i] for i in range(0, 18, 3)]  # each thread its own order
        serial = [[(p.image, p.topk[0].label) for p in clf.predict(order)] for order in orders]
        concurrent = _run_threads(len(orders), lambda i: [(p.image, p.topk[0].label) for p in clf.predict(orders[i])])
    assert concurrent == serial


LOGGER = """
import os, sys, threading, time
stop = threading.Event()
def log():
    n = 0
    while not stop.is_set() or n < 200:
        print(f"line {n}", file=sys.stderr, flush=True)
        os.write(2, f"raw {n}\\n".encode())
        n += 1
        time.sleep(0.0005)
    print(f"total {n}", file=sys.stderr, flush=True)
t = threading.Thread(target=log)
t.start()
from runtimes.adapters import create_runner
runner = create_runner(sys.argv[1], sys.argv[2], **({"allow_fallback": True} if sys.argv[1] == "cuda" else {})).load()
runner.close()
stop.set()
t.join()
"""


@pytest.mark.parametrize("provider", ["cpu", provider_param("openvino"), "cuda"])
def test_loading_a_model_loses_no_line_another_thread_prints(demo_export, provider):
    """cuda here falls back to CPU, which takes the path that reads ORT's log (fds 1 and 2)."""
    proc = subprocess.run([sys.executable, "-c", LOGGER, provider, str(demo_export.path)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    total = int(re.search(r"total (\d+)", proc.stderr).group(1))
    # print() writes a line's text and its newline separately, so another thread's line
    # may land between them: look for the numbers, not for whole lines.
    assert [int(n) for n in re.findall(r"line (\d+)", proc.stderr)] == list(range(total))
    assert [int(n) for n in re.findall(r"raw (\d+)", proc.stderr)] == list(range(total))
