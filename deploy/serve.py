"""Serve a model over KServe's Open Inference Protocol (v2), REST and gRPC, on kserve's ModelServer.

    python -m deploy.serve --model artifacts/googlenet.onnx          # or --bundle DIR (its tuned choice, if any)
        [--host 127.0.0.1] [--http-port 8080] [--grpc-port 8081] [--provider cpu]
        [--max-batch 32] [--max-body-mb 64] [--max-json-mb 8] [--max-pixels N] [--threads N] [--replicas N]
        [--max-inflight-mb 256] [--max-inflight-pixels N] [--busy-wait-s 30] [--max-grpc-calls 32]

Two models (see ``deploy.kserve_models``): ``googlenet`` takes preprocessed FP32 tensors,
``googlenet-image`` takes encoded images. Any v2 client works; with ``tritonclient``:

    import tritonclient.grpc as grpcclient
    client = grpcclient.InferenceServerClient("127.0.0.1:8081")
    data = grpcclient.InferInput("image", [1], "BYTES"); data.set_data_from_numpy(np.array([jpeg], dtype=object))
    client.infer("googlenet-image", [data]).as_numpy("label")

Over REST, one image can also be the whole body (``curl -T cat.jpg
http://127.0.0.1:8080/predictions/googlenet``, or a POST to ``googlenet-image``'s infer
route with ``Content-Type: image/jpeg``).

The server listens on loopback unless ``--host`` says otherwise. A binary request body
over ``--max-body-mb`` gets HTTP 413 (gRPC: RESOURCE_EXHAUSTED), a JSON one over the
lower ``--max-json-mb`` too (parsing JSON holds the interpreter for its whole length),
a batch over ``--max-batch`` a 400 (see ``deploy.kserve_server``). All requests together
hold at most ``--max-inflight-mb`` of request bytes and ``--max-inflight-pixels`` of
decoding images, and at most ``--max-grpc-calls`` gRPC calls run at once; a request that
waits ``--busy-wait-s`` for its share gets a 503 with Retry-After (``deploy.budget``; the
README gives the peak memory as a formula of these flags). On SIGTERM, requests in flight
have ``GRACE_S`` seconds to finish.
``--replicas N`` runs N copies of the model on a local Ray Serve cluster behind the same
two endpoints.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
from pathlib import Path

from deploy.v2_client import DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT
from runtimes.cli import add_max_pixels, non_negative_int, positive_int, run_cli, seconds
from runtimes.errors import ToolkitError
from runtimes.preprocess import MAX_PIXELS
from runtimes.spec import DEFAULT_MODEL

DEFAULT_MAX_BODY_MB = 64
# JSON is parsed in one call that holds the interpreter: about 5 ms per MB on the 2-core
# development machine, a stall of every other request; 8 MB is two FP32 images as JSON.
DEFAULT_MAX_JSON_MB = 8
GRACE_S = 5  # on SIGTERM, how long requests in flight may take to finish
# A slow sender is cut off: a request's headers must arrive within HEADER_TIMEOUT_S of its first
# byte (or of the connection), and its body may pause no longer than BODY_TIMEOUT_S between reads.
# Ample on any real network (a 64 MB body at 1 Mbit/s arrives in steady packets); a client that
# trickles bytes to hold connections open is closed with a 408.
HEADER_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 10.0
# What all requests together may hold (deploy.budget): request bytes (REST bodies and gRPC
# messages, each counted at what it costs while served), and decoded pixels, by default
# room for two images at --max-pixels (one per core here). A request waits BUSY_WAIT_S for
# its share, then 503.
DEFAULT_INFLIGHT_MB = 256
BUSY_WAIT_S = 30.0
# grpc reads a call's whole message before the budget sees it: the calls it serves at once
# are bounded too (more are refused with RESOURCE_EXHAUSTED), enough for 16 closed-loop clients
# and their next calls.
MAX_GRPC_CALLS = 32


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m deploy.serve", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", type=Path, help=f"an exported model (default: {DEFAULT_MODEL})")
    source.add_argument("--bundle", type=Path, help="a bundle folder or .tar.gz from `python -m deploy.bundle`")
    parser.add_argument("--variant", help="bundle: which model to serve, fp32, fp16 or int8 (default: the bundle's default)")
    parser.add_argument("--provider", help="cpu, cuda, tensorrt, openvino or opencv (default: the bundle's preference, else cpu)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--http-port", type=non_negative_int, default=DEFAULT_HTTP_PORT)
    parser.add_argument("--grpc-port", type=non_negative_int, default=DEFAULT_GRPC_PORT)
    parser.add_argument("--max-batch", type=positive_int, default=32, help="most images or tensors per request")
    parser.add_argument("--max-body-mb", type=positive_int, default=DEFAULT_MAX_BODY_MB,
                        help="largest binary request body (binary tensors, an image; gRPC message)")
    parser.add_argument("--max-json-mb", type=positive_int, default=DEFAULT_MAX_JSON_MB, help="largest JSON request body")
    parser.add_argument("--header-timeout-s", type=seconds, default=HEADER_TIMEOUT_S,
                        help=f"close a connection whose request headers take longer, with a 408 "
                             f"(default: {HEADER_TIMEOUT_S:g})")
    parser.add_argument("--body-timeout-s", type=seconds, default=BODY_TIMEOUT_S,
                        help=f"close a connection whose request body pauses longer, with a 408 (default: {BODY_TIMEOUT_S:g})")
    parser.add_argument("--max-inflight-mb", type=positive_int, default=DEFAULT_INFLIGHT_MB,
                        help=f"request bytes all requests may hold at once, REST and gRPC together, a JSON body "
                             f"counting 5x its length and a gRPC message 2x (default: {DEFAULT_INFLIGHT_MB})")
    parser.add_argument("--max-inflight-pixels", type=positive_int, metavar="N",
                        help="8-bit RGB pixels all requests may decode at once, about 7 bytes each "
                             "(default: twice --max-pixels, room for two images of the largest size)")
    parser.add_argument("--busy-wait-s", type=seconds, default=BUSY_WAIT_S,
                        help=f"how long a request waits for its share of those budgets before a 503 with "
                             f"Retry-After (default: {BUSY_WAIT_S:g})")
    parser.add_argument("--max-grpc-calls", type=positive_int, default=MAX_GRPC_CALLS,
                        help=f"gRPC calls served at once, each message up to --max-body-mb; more are refused with "
                             f"RESOURCE_EXHAUSTED (default: {MAX_GRPC_CALLS})")
    parser.add_argument("--threads", type=positive_int, help="the runtime's intra-op threads")
    add_max_pixels(parser)
    parser.add_argument("--replicas", type=positive_int, help="serve N replicas on a local Ray Serve cluster")
    return parser


class ServeError(ToolkitError):
    """The server cannot start as asked."""


def check_port(host: str, port: int, protocol: str) -> None:
    """Fail in one line, before any loading, if ``host:port`` cannot be listened on."""
    if port == 0:
        return
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except OSError as exc:
        raise ServeError(f"cannot resolve --host {host}: {exc.strerror or exc}") from None
    try:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
            probe.bind(address)
    except OSError as exc:
        raise ServeError(f"cannot listen for {protocol} on {host}:{port}: {exc.strerror or exc}; "
                         f"pick another --{protocol.lower()}-port or stop what uses it") from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.http_port == args.grpc_port != 0:
        raise ServeError(f"--http-port and --grpc-port are both {args.http_port}; give each protocol its own port")
    check_port(args.host, args.http_port, "HTTP")
    check_port(args.host, args.grpc_port, "gRPC")
    from deploy import kserve_models as km  # kserve loads only now
    from deploy.budget import give_back_freed_memory
    from deploy.kserve_server import HostModelServer
    from runtimes.tuned import first_loadable, plan, skipped_line

    give_back_freed_memory()  # so that the budgets bound the process's memory, not only what it uses
    with contextlib.ExitStack() as stack:
        given = {"provider": args.provider, "variant": args.variant, "threads": args.threads}
        attempts = plan(stack, model=args.model or DEFAULT_MODEL, bundle=args.bundle, given=given,
                        say=lambda line: print(line, file=sys.stderr))

        def load(attempt) -> km.Engine:
            engine = km.Engine(attempt.model, attempt.provider, spec=attempt.spec, max_batch=args.max_batch,
                               max_pixels=args.max_pixels, wait_s=args.busy_wait_s,
                               inflight_pixels=args.max_inflight_pixels or 2 * (args.max_pixels or MAX_PIXELS),
                               options=attempt.options)
            engine.classifier  # noqa: B018 - fail here, in one line, not in the server
            return engine

        engine, used, skipped = first_loadable(attempts, load)
        provider = used.label()
        for reason in skipped:
            print(skipped_line(reason, used), file=sys.stderr)
        stack.callback(engine.close)
        if args.replicas:
            from deploy import ray_replicas
            stack.callback(ray_replicas.shutdown)
            models = ray_replicas.replicated_models(engine, args.replicas)
        else:
            models = [km.TensorModel(engine), km.ImageModel(engine)]
        for m in models:
            m.load()
        print(f"serving {', '.join(m.name for m in models)} ({provider}, {engine.model.name}) on "
              f"http://{args.host}:{args.http_port} and grpc {args.host}:{args.grpc_port}", file=sys.stderr, flush=True)
        server = HostModelServer(args.host, http_port=args.http_port, grpc_port=args.grpc_port,
                                 max_body=args.max_body_mb << 20, max_json=args.max_json_mb << 20,
                                 header_timeout=args.header_timeout_s, body_timeout=args.body_timeout_s,
                                 inflight_bytes=args.max_inflight_mb << 20, wait_s=args.busy_wait_s,
                                 max_grpc_calls=args.max_grpc_calls,
                                 grace_period=GRACE_S)
        server.start(models)  # until SIGINT or SIGTERM
    return 0


if __name__ == "__main__":
    run_cli(main)
