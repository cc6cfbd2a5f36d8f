"""A bounded load run against a v2 server, with tritonclient, and the in-process figure beside it.

    python -m deploy.load --grpc 127.0.0.1:8081 [--clients 8] [--requests 25] [--batch 1]
    python -m deploy.load --http 127.0.0.1:8080 ...
    python -m deploy.load --in-process artifacts/googlenet.onnx ...

Each of ``--clients`` threads sends ``--requests`` requests of one seeded FP32 batch to
the ``googlenet`` model and checks every answer against the first one. It prints one
JSON line: requests, errors, wrong answers, images per second, and the p50 and p99 of
the request latency in milliseconds. ``--in-process`` runs the same batches through a
``Classifier`` runner in this process, one after another, for comparison.

An address without a port gets ``deploy.serve``'s (8080 for REST, 8081 for gRPC), not
the client library's (gRPC's is 443). A first request that fails (nothing listening, a
server that is not this one) is one ``error:`` line and exit 2; on a terminal, a
progress line counts the requests.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from deploy.serve import DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT
from runtimes.cli import positive_int, run_cli
from runtimes.errors import ToolkitError, first_line
from runtimes.progress import Progress


class LoadError(ToolkitError):
    """The load run cannot start: a bad address, or a server that does not answer."""


@dataclass(frozen=True)
class LoadResult:
    target: str
    requests: int
    errors: int
    wrong: int
    images_per_s: float
    p50_ms: float
    p99_ms: float
    first_error: str | None = None


def server_address(text: str, default_port: int) -> str:
    """``host:port`` from ``host``, ``host:port``, ``[::1]:port`` or a URL; the port defaults to ``default_port``."""
    parts = urlsplit(text if "//" in text else f"//{text}")
    try:
        port = parts.port or default_port
    except ValueError:
        raise LoadError(f"{text!r} is not HOST:PORT: the port must be a number from 0 to 65535") from None
    if not parts.hostname:
        raise LoadError(f"{text!r} is not HOST:PORT: no host")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{port}"


def seeded_batch(batch: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)


def grpc_infer(address: str):
    """A function batch -> logits over gRPC; one client per calling thread."""
    import tritonclient.grpc as grpcclient

    local = threading.local()

    def infer(batch: np.ndarray) -> np.ndarray:
        if not hasattr(local, "client"):
            local.client = grpcclient.InferenceServerClient(address)
        tensor = grpcclient.InferInput("input", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
        return local.client.infer("googlenet", [tensor]).as_numpy("logits")

    return infer


def http_infer(address: str, binary: bool = True):
    """A function batch -> logits over REST (binary tensor extension unless ``binary`` is False)."""
    import tritonclient.http as httpclient

    local = threading.local()

    def infer(batch: np.ndarray) -> np.ndarray:
        if not hasattr(local, "client"):
            local.client = httpclient.InferenceServerClient(address)
        tensor = httpclient.InferInput("input", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch, binary_data=binary)
        wanted = httpclient.InferRequestedOutput("logits", binary_data=binary)
        return local.client.infer("googlenet", [tensor], outputs=[wanted]).as_numpy("logits")

    return infer


def load_run(infer, target: str, *, clients: int, requests: int, batch: np.ndarray) -> LoadResult:
    """``clients`` threads each calling ``infer(batch)`` ``requests`` times; every answer must equal the first.

    Raises LoadError, in one line, if that first request fails.
    """
    try:
        expected = infer(batch)  # also warms the connection and the session
    except ToolkitError:
        raise
    except Exception as exc:  # noqa: BLE001 - refused connection, unknown host, a 4xx from another server...
        raise LoadError(f"the first request to {target} failed: {first_line(exc)}") from None
    latencies: list[float] = []
    errors, wrong, first_error = 0, 0, None
    lock = threading.Lock()
    progress = Progress(clients * requests)

    def client() -> None:
        nonlocal errors, wrong, first_error
        for _ in range(requests):
            start = time.perf_counter()
            try:
                got = infer(batch)
            except Exception as exc:  # noqa: BLE001 - counted and reported, the run goes on
                with lock:
                    errors += 1
                    first_error = first_error or f"{type(exc).__name__}: {exc}"[:300]
                    progress.advance()
                continue
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)
                wrong += not np.array_equal(got, expected)
                progress.advance()

    start = time.perf_counter()
    with progress, ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client) for _ in range(clients)]:
            future.result()
    wall = time.perf_counter() - start
    ms = np.array(latencies) * 1e3 if latencies else np.array([np.nan])
    return LoadResult(target, clients * requests, errors, wrong, round(len(latencies) * len(batch) / wall, 2),
                      round(float(np.percentile(ms, 50)), 2), round(float(np.percentile(ms, 99)), 2), first_error)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.load", description=__doc__.split("\n\n")[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--grpc", metavar="HOST:PORT")
    target.add_argument("--http", metavar="HOST:PORT")
    target.add_argument("--in-process", type=Path, metavar="MODEL")
    parser.add_argument("--json-tensors", action="store_true", help="REST: send tensors as JSON, not binary")
    parser.add_argument("--clients", type=positive_int, default=8)
    parser.add_argument("--requests", type=positive_int, default=25, help="per client")
    parser.add_argument("--batch", type=positive_int, default=1)
    args = parser.parse_args(argv)
    batch = seeded_batch(args.batch)
    if args.in_process:
        from runtimes.classifier import Classifier

        with Classifier(args.in_process) as classifier:
            # One caller: the runtime's own threads already use every core.
            result = load_run(classifier.runner.infer, f"in-process {args.in_process}", clients=1,
                              requests=args.clients * args.requests, batch=batch)
    elif args.grpc:
        address = server_address(args.grpc, DEFAULT_GRPC_PORT)
        result = load_run(grpc_infer(address), f"grpc {address}", clients=args.clients,
                          requests=args.requests, batch=batch)
    else:
        address = server_address(args.http, DEFAULT_HTTP_PORT)
        result = load_run(http_infer(address, binary=not args.json_tensors), f"http {address}",
                          clients=args.clients, requests=args.requests, batch=batch)
    print(json.dumps(asdict(result)))
    return 1 if result.errors or result.wrong else 0


if __name__ == "__main__":
    run_cli(main)
