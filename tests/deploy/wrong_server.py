"""``deploy.serve`` with a ``googlenet`` model that answers wrong on every Nth request: what the load sweep must catch.

    python -m tests.deploy.wrong_server --every N [any deploy.serve flags: --model M --http-port P ...]

The whole server is deploy.serve's (its flags, kserve_server.HostModelServer, kserve_models'
Engine and ImageModel); only kserve_models.TensorModel is replaced, before deploy.serve
builds its models, by a subclass whose logits are rolled by one class on requests N, 2N,
3N... (counted over both protocols). The top-1 class moves, so a checker that compares every
answer counts exactly requests // N wrong ones. Test-only: it lives beside the tests.
"""

from __future__ import annotations

import argparse
import itertools
import threading

import numpy as np

from runtimes.cli import positive_int, run_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.deploy.wrong_server")
    parser.add_argument("--every", type=positive_int, required=True, help="answer wrong on every Nth request")
    args, serve_args = parser.parse_known_args(argv)

    from deploy import kserve_models, serve

    count, lock = itertools.count(1), threading.Lock()

    class WrongEveryNth(kserve_models.TensorModel):
        def _logits(self, tensor):
            logits = super()._logits(tensor)
            with lock:  # _logits runs in the event loop's thread pool
                n = next(count)
            return np.roll(logits, 1, axis=1) if n % args.every == 0 else logits

    kserve_models.TensorModel = WrongEveryNth  # deploy.serve.main looks it up when it builds the models
    return serve.main(serve_args)


if __name__ == "__main__":
    run_cli(main)
