"""A bounded load run against a v2 server, with tritonclient, and the in-process figure beside it;
or, with ``--sweep``, a load sweep over concurrency levels and protocols that checks every answer.

    python -m deploy.load --grpc 127.0.0.1:8081 [--clients 8] [--requests 25] [--batch 1]
    python -m deploy.load --http 127.0.0.1:8080 ...
    python -m deploy.load --in-process artifacts/googlenet.onnx ...
    python -m deploy.load --sweep --http 127.0.0.1:8080 --grpc 127.0.0.1:8081 [--model artifacts/googlenet.onnx]
        [--concurrency 1,2,4,8,16] [--protocols rest-binary,rest-json,grpc] [--window-s 5]
        [--min-windows 3] [--max-windows 8] [--max-p99-ms 100] [--json PATH] [--plot PATH]

Each of ``--clients`` threads sends ``--requests`` requests of one seeded FP32 batch to
the ``googlenet`` model and checks every answer against the first one. It prints one
JSON line: requests, errors, wrong answers, images per second, and the p50 and p99 of
the request latency in milliseconds. ``--in-process`` runs the same batches through a
``Classifier`` runner in this process, one after another, for comparison.

``--sweep`` runs a closed loop at each ``--concurrency`` level over each of
``--protocols`` (REST with binary tensors needs ``--http``, REST with JSON tensors too,
gRPC ``--grpc``), sending the sample images (or ``--images DIR``) preprocessed for the
model, and compares every response with the in-process answer of ``--model`` (or a
``--bundle``'s ``--variant``: give the one the server runs) for the same image: top-1,
and the model precision's tolerance on the probabilities. Each level runs windows of
``--window-s`` until ``--min-windows`` of them agree within 10%, or reports it unstable
after ``--max-windows``. It prints the in-process figure on the same images, then a table
(throughput, p50 and p99, each with the range of its per-window values, errors, wrong
answers, windows, stability) and each protocol's knee: the highest throughput whose p99
stays within ``--max-p99-ms``. ``--json`` writes the report, ``--plot`` a PNG of
throughput and p99 against concurrency (needs matplotlib). See ``deploy.sweep`` for the rules.

An address without a port gets ``deploy.serve``'s (8080 for REST, 8081 for gRPC), not
the client library's (gRPC's is 443). A first request that fails (nothing listening, a
server that is not this one) is one ``error:`` line and exit 2; on a terminal, a
progress line counts the requests (the levels, with ``--sweep``). Exit 1 when a response
was wrong or a request failed, with a line that says so.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from deploy import sweep, sweep_report
from deploy.v2_client import (DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT, PROTOCOLS, first_answer, grpc_infer, http_infer,
                              protocol_infer, server_address)
from runtimes.cli import EXIT_FAILED, csv_list, positive_int, run_cli, seconds
from runtimes.errors import ToolkitError
from runtimes.progress import Progress

DEFAULTS = {"clients": 8, "requests": 25, "batch": 1}  # the bounded run's; not flags of --sweep


class LoadError(ToolkitError):
    """The load run cannot start as asked: flags that do not go together, a protocol without its address."""


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


def seeded_batch(batch: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)


def load_run(infer, target: str, *, clients: int, requests: int, batch: np.ndarray) -> LoadResult:
    """``clients`` threads each calling ``infer(batch)`` ``requests`` times; every answer must equal the first.

    Raises ClientError, in one line, if that first request fails.
    """
    expected = first_answer(infer, target, batch)  # also warms the connection and the session
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


def concurrency_list(text: str) -> list[int]:
    """argparse type for --concurrency: ``1,2,4`` -> [1, 2, 4], ascending, each once."""
    try:
        levels = csv_list(text, positive_int)
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"must be whole numbers of 1 or more, separated by commas; got {text!r}") \
            from None
    if not levels:
        raise argparse.ArgumentTypeError("name at least one level")
    return sorted(set(levels))


def protocol_list(text: str) -> list[str]:
    """argparse type for --protocols: names from PROTOCOLS, each once, in the order given."""
    names = list(dict.fromkeys(csv_list(text)))
    unknown = [name for name in names if name not in PROTOCOLS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown {unknown[0]!r}; known: {', '.join(PROTOCOLS)}" if unknown
                                         else f"name at least one of {', '.join(PROTOCOLS)}")
    return names


def milliseconds(text: str) -> float:
    """argparse type for --max-p99-ms: a finite number above 0."""
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number of milliseconds above 0, got {text}")
    return value


def at_least_two(text: str) -> int:
    """argparse type for --min-windows: agreement needs two windows to compare."""
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be at least 2 (agreement needs two windows), got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from runtimes.spec import DEFAULT_MODEL

    parser = argparse.ArgumentParser(prog="python -m deploy.load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--grpc", metavar="HOST:PORT")
    parser.add_argument("--http", metavar="HOST:PORT")
    parser.add_argument("--in-process", type=Path, metavar="MODEL")
    parser.add_argument("--json-tensors", action="store_true", help="REST: send tensors as JSON, not binary")
    parser.add_argument("--clients", type=positive_int, help=f"(default: {DEFAULTS['clients']})")
    parser.add_argument("--requests", type=positive_int, help=f"per client (default: {DEFAULTS['requests']})")
    parser.add_argument("--batch", type=positive_int, help=f"(default: {DEFAULTS['batch']})")
    # Defaults None: a sweep flag given without --sweep is refused, not ignored.
    group = parser.add_argument_group("--sweep", "a closed-loop sweep that checks every answer (see deploy.sweep)")
    group.add_argument("--sweep", action="store_true", help="sweep --concurrency levels over --protocols")
    group.add_argument("--model", type=Path,
                       help=f"the model the server runs, answered in-process (default: {DEFAULT_MODEL})")
    group.add_argument("--bundle", type=Path,
                       help="a bundle the server runs, instead of --model; answered in-process as deploy.serve runs "
                            "it (its tuned choice, if any)")
    group.add_argument("--variant",
                       help="bundle: the model the server runs, fp32, fp16 or int8 (default: the bundle's)")
    group.add_argument("--provider", help="the runtime the server runs, for the in-process answers "
                                          "(default: the bundle's tuned choice or preference, else cpu)")
    group.add_argument("--images", type=Path, metavar="DIR",
                       help=f"the images to send, the first {sweep.MAX_IMAGES} (default: the sample images)")
    group.add_argument("--concurrency", type=concurrency_list, metavar="N,N,...",
                       help=f"closed-loop clients per level (default: {','.join(map(str, sweep.DEFAULT_CONCURRENCY))})")
    group.add_argument("--protocols", type=protocol_list, metavar="P,P,...",
                       help=f"of {', '.join(PROTOCOLS)} (default: all)")
    group.add_argument("--window-s", type=seconds, help=f"seconds per window (default: {sweep.DEFAULT_WINDOW_S:g})")
    group.add_argument("--min-windows", type=at_least_two,
                       help=f"windows that must agree within {sweep.AGREE * 100:g}%% (default: {sweep.DEFAULT_MIN_WINDOWS})")
    group.add_argument("--max-windows", type=positive_int,
                       help=f"windows before a level is reported unstable (default: {sweep.DEFAULT_MAX_WINDOWS})")
    group.add_argument("--max-p99-ms", type=milliseconds,
                       help=f"the knee's p99 bound (default: {sweep.DEFAULT_MAX_P99_MS:g})")
    group.add_argument("--json", type=Path, metavar="PATH", help="write the sweep's report as JSON")
    group.add_argument("--plot", type=Path, metavar="PATH", help="a PNG of throughput and p99 against concurrency")
    return parser


SWEEP_ONLY = ("model", "bundle", "variant", "provider", "images", "concurrency", "protocols", "window_s", "min_windows",
              "max_windows", "max_p99_ms", "json", "plot")
SWEEP_DEFAULTS = {"concurrency": list(sweep.DEFAULT_CONCURRENCY), "protocols": list(PROTOCOLS),
                  "window_s": sweep.DEFAULT_WINDOW_S, "min_windows": sweep.DEFAULT_MIN_WINDOWS,
                  "max_windows": sweep.DEFAULT_MAX_WINDOWS, "max_p99_ms": sweep.DEFAULT_MAX_P99_MS}
# Which address each protocol needs.
ADDRESS_OF = {"rest-binary": "http", "rest-json": "http", "grpc": "grpc"}
SAMPLE_IMAGES = Path(__file__).resolve().parents[1] / "samples" / "images"


def _flags(names) -> str:
    flags = ["--" + name.replace("_", "-") for name in names]
    return flags[0] if len(flags) == 1 else f"{', '.join(flags[:-1])} and {flags[-1]}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.sweep:
        return run_sweep(args)
    targets = [flag for flag in ("grpc", "http", "in_process") if getattr(args, flag) is not None]
    if not targets:
        parser.error("one of the arguments --grpc --http --in-process is required")
    if len(targets) > 1:
        parser.error(f"argument {_flags(targets[1:2])}: not allowed with argument {_flags(targets[:1])}")
    given = [name for name in SWEEP_ONLY if getattr(args, name) is not None]
    if given:
        raise LoadError(f"{_flags(given)} {'goes' if len(given) == 1 else 'go'} with --sweep only; add --sweep, "
                        f"or leave {'it' if len(given) == 1 else 'them'} out")
    for name, value in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
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


def sweep_addresses(args: argparse.Namespace) -> dict[str, str]:
    """Protocol -> ``host:port`` for each of ``--protocols``; a LoadError line for a missing address or a flag
    that does not apply."""
    if args.in_process is not None:
        raise LoadError("--in-process does not go with --sweep: the sweep measures in-process itself, on --model")
    given = [name for name in ("clients", "requests", "batch") if getattr(args, name) is not None]
    given += ["json_tensors"] if args.json_tensors else []
    if given:
        raise LoadError(f"{_flags(given)} {'does' if len(given) == 1 else 'do'} not apply to --sweep: --concurrency "
                        "sets the clients, each request is one image, --protocols rest-json sends JSON tensors")
    if args.http is None and args.grpc is None:
        raise LoadError("--sweep needs the server's addresses: --http HOST:PORT and/or --grpc HOST:PORT")
    for name, value in SWEEP_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.max_windows < args.min_windows:
        raise LoadError(f"--max-windows {args.max_windows} is below --min-windows {args.min_windows}")
    if args.bundle is not None and args.model is not None:
        raise LoadError("--model and --bundle both name the model; give one")
    if args.variant is not None and args.bundle is None:
        raise LoadError("--variant picks a model inside a bundle; pass --bundle DIR too")
    if args.plot is not None and not sweep_report.has_matplotlib():
        raise LoadError("--plot needs matplotlib: pip install matplotlib")
    addresses = {}
    for protocol in args.protocols:
        flag = ADDRESS_OF[protocol]
        if getattr(args, flag) is None:
            raise LoadError(f"--protocols {protocol} needs --{flag} HOST:PORT; give it, or leave {protocol} "
                            "out of --protocols")
        default = DEFAULT_HTTP_PORT if flag == "http" else DEFAULT_GRPC_PORT
        addresses[protocol] = server_address(getattr(args, flag), default)
    return addresses


def run_sweep(args: argparse.Namespace) -> int:
    import contextlib

    from runtimes.classifier import Classifier
    from runtimes.preprocess import find_images
    from runtimes.spec import DEFAULT_MODEL, ModelSpec
    from runtimes.tolerances import for_precision
    from runtimes.tuned import first_loadable, plan

    addresses = sweep_addresses(args)
    folder = args.images or SAMPLE_IMAGES
    images = find_images(folder)[:sweep.MAX_IMAGES]
    if not images:
        raise LoadError(f"no images in {folder}; give --images DIR with some")
    with contextlib.ExitStack() as stack:
        if args.bundle is not None:
            from runtimes.bundle import open_bundle

            chosen = stack.enter_context(open_bundle(args.bundle)).model(args.variant)
            model, spec = chosen.path, chosen.spec
        else:
            model = args.model or DEFAULT_MODEL
            spec = ModelSpec.from_onnx(model)  # the metadata only: the servers are asked before the model loads
        names = {"input_name": spec.input_name, "output_name": spec.output_name}
        clients = {protocol: (protocol_infer(protocol, address, **names), f"{protocol} {address}")
                   for protocol, address in addresses.items()}
        probes = sweep.probe(clients, sweep.Answers.inputs_of(images[:1], spec)[0])
        # The reference runs what the server runs: the same attempts, in the same order, as deploy.serve.
        given = {"provider": args.provider, "variant": args.variant}
        attempts = plan(stack, model=model if args.bundle is None else DEFAULT_MODEL, bundle=args.bundle, given=given,
                        say=lambda line: print(line, file=sys.stderr))
        classifier, used, _ = first_loadable(attempts, lambda a: Classifier(
            a.model, a.provider, batch_size=1, spec=a.spec, workers=1, **a.options))
        stack.callback(classifier.close)
        precision = used.precision or classifier.spec.precision
        answers = sweep.Answers.reference(images, classifier, for_precision(precision))
        with Progress(1 + len(clients) * len(args.concurrency)) as progress:
            report = sweep.sweep(clients, answers, classifier.runner.infer, probes=probes, concurrency=args.concurrency,
                                 window_s=args.window_s, min_windows=args.min_windows, max_windows=args.max_windows,
                                 max_p99_ms=args.max_p99_ms, progress=progress)
    report = {"model": str(used.model), "precision": precision, "in_process_on": used.label(), "addresses": addresses,
              **report}
    print(f"{Path(used.model).name} ({precision}, in-process on {used.label()}), {len(images)} images from {folder}")
    print(sweep_report.table(report))
    if args.json is not None:
        from runtimes.atomic import write_text

        write_text(args.json, json.dumps(report, indent=2) + "\n")
    if args.plot is not None:
        sweep_report.plot(report, args.plot,
                   title=f"{Path(used.model).name} ({precision}, {used.label()}): closed-loop sweep, every answer checked")
    if report["wrong"]:
        first = next(row for row in report["levels"] if row["first_wrong"])
        print(f"wrong answers: {report['wrong']} of {report['responses']} responses differ from the in-process "
              f"answers; first at {first['protocol']} concurrency {first['concurrency']}: {first['first_wrong']}",
              file=sys.stderr)
    if report["errors"]:
        first = next(row for row in report["levels"] if row["first_error"])
        print(f"errors: {report['errors']} requests failed; first at {first['protocol']} concurrency "
              f"{first['concurrency']}: {first['first_error']}", file=sys.stderr)
    return EXIT_FAILED if report["wrong"] or report["errors"] else 0


if __name__ == "__main__":
    run_cli(main)
