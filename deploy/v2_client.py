"""Clients of a v2 (Open Inference Protocol) server such as ``deploy.serve``, over REST and gRPC, with tritonclient.

A library, not a tool: ``deploy.load`` and its ``--sweep`` use it, and ``deploy.serve``
takes its default ports from here, so the client and the server cannot disagree about them
without one tool importing another.

Each ``*_infer(address)`` returns a function ``batch -> output`` for the FP32 tensor model
(``googlenet``: ``input`` [N, 3, H, W] in, ``logits`` out). It is safe to call from many
threads: each calling thread gets its own connection, made on its first call.
tritonclient is imported only when a client is made: the server's own processes need none.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from urllib.parse import urlsplit

import numpy as np

from runtimes.errors import ToolkitError, first_line

DEFAULT_HTTP_PORT = 8080
DEFAULT_GRPC_PORT = 8081
# deploy.kserve_models.TENSOR_MODEL; not imported from there: that module loads kserve.
TENSOR_MODEL = "googlenet"
# How each protocol a client may ask for travels: REST with the binary tensor extension,
# REST with tensors as JSON numbers, or gRPC.
PROTOCOLS = ("rest-binary", "rest-json", "grpc")

Infer = Callable[[np.ndarray], np.ndarray]


class ClientError(ToolkitError):
    """A server cannot be used as given: an address that is not HOST:PORT, or a first request that fails."""


def server_address(text: str, default_port: int) -> str:
    """``host:port`` from ``host``, ``host:port``, ``[::1]:port`` or a URL; the port defaults to ``default_port``."""
    parts = urlsplit(text if "//" in text else f"//{text}")
    try:
        port = parts.port or default_port
    except ValueError:
        raise ClientError(f"{text!r} is not HOST:PORT: the port must be a number from 0 to 65535") from None
    if not parts.hostname:
        raise ClientError(f"{text!r} is not HOST:PORT: no host")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{port}"


def grpc_infer(address: str, *, model: str = TENSOR_MODEL, input_name: str = "input",
               output_name: str = "logits") -> Infer:
    """A function batch -> output over gRPC; one client per calling thread."""
    import tritonclient.grpc as grpcclient

    local = threading.local()

    def infer(batch: np.ndarray) -> np.ndarray:
        if not hasattr(local, "client"):
            local.client = grpcclient.InferenceServerClient(address)
        tensor = grpcclient.InferInput(input_name, list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
        return local.client.infer(model, [tensor]).as_numpy(output_name)

    return infer


def http_infer(address: str, binary: bool = True, *, model: str = TENSOR_MODEL, input_name: str = "input",
               output_name: str = "logits") -> Infer:
    """A function batch -> output over REST (binary tensor extension unless ``binary`` is False)."""
    import tritonclient.http as httpclient

    local = threading.local()

    def infer(batch: np.ndarray) -> np.ndarray:
        if not hasattr(local, "client"):
            local.client = httpclient.InferenceServerClient(address)
        tensor = httpclient.InferInput(input_name, list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch, binary_data=binary)
        wanted = httpclient.InferRequestedOutput(output_name, binary_data=binary)
        return local.client.infer(model, [tensor], outputs=[wanted]).as_numpy(output_name)

    return infer


def protocol_infer(protocol: str, address: str, **names: str) -> Infer:
    """The client function for one of PROTOCOLS at ``address`` (``host:port``, see server_address)."""
    if protocol == "grpc":
        return grpc_infer(address, **names)
    if protocol in ("rest-binary", "rest-json"):
        return http_infer(address, binary=protocol == "rest-binary", **names)
    raise ClientError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")


def first_answer(infer: Infer, target: str, batch: np.ndarray) -> np.ndarray:
    """``infer(batch)``, which also opens the connection; a failure is one ClientError line.

    The first request is where a wrong address shows (nothing listening, an unknown host,
    another server's 404), and none of those is worth a traceback.
    """
    try:
        return infer(batch)
    except ToolkitError:
        raise
    except Exception as exc:  # noqa: BLE001 - refused connection, unknown host, a 4xx from another server...
        raise ClientError(f"the first request to {target} failed: {first_line(exc)}") from None
