"""kserve's ModelServer on a chosen address, with request limits.

kserve 0.21 binds REST to 0.0.0.0 and gRPC to [::]; :class:`HostModelServer` binds both
to ``host`` (loopback by default in ``deploy.serve``). :class:`RequestLimits` refuses a
body over the limit with HTTP 413 before reading it, and gives a request without a
Content-Type one: tritonclient sends none, and FastAPI no longer reads such a body as
JSON. A body is read as the binary-tensor extension when it has an
Inference-Header-Content-Length header, and as JSON otherwise.
"""

from __future__ import annotations

import asyncio
from concurrent import futures

import orjson
from grpc import aio

from deploy.kserve_import import command_line_hidden

with command_line_hidden():
    from kserve import InferInput, InferRequest, ModelServer
    from kserve.errors import InvalidInput
    from kserve.model_server import FASTAPI_APP_IMPORT_STRING, app
    from kserve.protocol.dataplane import DataPlane
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
    from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor, LoggingInterceptor
    from kserve.protocol.grpc.server import GRPCServer
    from kserve.protocol.grpc.servicer import InferenceServicer
    from kserve.protocol.infer_type import RequestedOutput
    from kserve.protocol.rest.server import RESTServer

BINARY_HEADER = b"inference-header-content-length"


class BodyTooLarge(Exception):
    pass


class RequestLimits:
    """ASGI middleware: refuse bodies over ``max_body`` bytes with 413, and give a missing Content-Type.

    The declared Content-Length is checked before anything is read; a chunked body is
    counted as it arrives.
    """

    def __init__(self, app, max_body: int) -> None:
        self.app, self.max_body = app, max_body

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.max_body:
            return await self._too_large(send, declared.decode("latin-1"))
        if scope["method"] == "POST" and b"content-type" not in headers:
            kind = b"application/octet-stream" if BINARY_HEADER in headers else b"application/json"
            scope = {**scope, "headers": [*scope["headers"], (b"content-type", kind)]}
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body:
                raise BodyTooLarge
            return message

        started = False

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked_send)
        except BodyTooLarge:
            if not started:
                await self._too_large(send, f"over {received}")

    async def _too_large(self, send, size: str) -> None:
        body = (f'{{"error": "request body of {size} bytes; this server takes at most {self.max_body} '
                f'(--max-body-mb)"}}').encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class RawBinaryDataPlane(DataPlane):
    """kserve's data plane, reading REST binary-extension requests without converting them.

    kserve 0.21 turns each binary input into a JSON-style Python list: 70 ms for one
    224x224 image, and a 500 for a BYTES input that is not UTF-8 (an encoded image).
    Here a binary input keeps its bytes, as a gRPC request's do.
    """

    def decode_inference_request(self, body, headers, model_name):
        if not isinstance(body, bytes):
            return super().decode_inference_request(body, headers, model_name)
        declared = headers.get(BINARY_HEADER.decode(), "")
        if not declared.isdigit() or int(declared) > len(body):
            raise InvalidInput(f"header {BINARY_HEADER.decode()}: {declared!r} is not a length within the "
                               f"{len(body)}-byte body")
        header_end = int(declared)
        try:
            header = orjson.loads(body[:header_end])
            inputs, raw, offset = [], [], header_end
            for spec in header["inputs"]:
                parameters = dict(spec.get("parameters") or {})
                tensor = InferInput(spec["name"], list(spec["shape"]), spec["datatype"], parameters=parameters)
                if "data" in spec:
                    tensor.data = spec["data"]
                else:
                    size = parameters.pop("binary_data_size", None)
                    if not isinstance(size, int) or size < 0 or offset + size > len(body):
                        raise InvalidInput(f"input {tensor.name!r} declares {size!r} bytes of binary data; "
                                           f"the body has {len(body) - offset} left")
                    raw.append(body[offset:offset + size])
                    offset += size
                inputs.append(tensor)
            outputs = [RequestedOutput(o["name"], o.get("parameters")) for o in header.get("outputs") or []]
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise InvalidInput(f"malformed binary inference request header: {type(exc).__name__}: {exc}") from None
        if offset != len(body):
            raise InvalidInput(f"the body has {len(body) - offset} bytes after the declared binary data")
        if raw and len(raw) != len(inputs):
            raise InvalidInput("send every input as binary data, or none")
        return InferRequest(model_name, inputs, request_id=header.get("id"), raw_inputs=raw or None,
                            parameters=header.get("parameters"), request_outputs=outputs or None)


class _HostGRPCServer(GRPCServer):
    """kserve's gRPC server (same servicer and interceptors), listening on ``host`` only."""

    def __init__(self, host: str, max_message: int, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._host, self._max_message = host, max_message

    async def start(self, max_workers: int) -> None:
        self._server = aio.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            interceptors=(LoggingInterceptor(), ExceptionToStatusInterceptor()),
            options=[("grpc.max_send_message_length", self._max_message),
                     ("grpc.max_receive_message_length", self._max_message)],
        )
        servicer = InferenceServicer(self._data_plane, self._model_repository_extension)
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, self._server)
        host = f"[{self._host}]" if ":" in self._host else self._host
        if not self._server.add_insecure_port(f"{host}:{self._port}"):
            raise OSError(f"cannot listen on {host}:{self._port} for gRPC")
        await self._server.start()
        await self._server.wait_for_termination()


class HostModelServer(ModelServer):
    """kserve's ModelServer with REST and gRPC on ``host`` and bodies limited to ``max_body`` bytes."""

    def __init__(self, host: str, *, max_body: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.host, self.max_body = host, max_body
        self.dataplane = RawBinaryDataPlane(model_registry=self.registered_models)

    def start(self, models) -> None:
        for model in models:
            if not model.ready:
                raise RuntimeError(f"model {model.name} is not loaded")
            self.register_model(model)
        app.add_middleware(RequestLimits, max_body=self.max_body)
        self._rest_server = RESTServer(
            FASTAPI_APP_IMPORT_STRING, self.dataplane, self.model_repository_extension, self.http_port,
            grace_period=self.grace_period, timeout_keep_alive=self.timeout_keep_alive,
        )
        self._rest_server.config.host = self.host  # read when uvicorn binds, after this
        self._grpc_server = _HostGRPCServer(
            self.host, self.max_body, self.grpc_port, self.dataplane, self.model_repository_extension,
            kwargs={}, grace_period=self.grace_period,
        )
        self.servers = [self._rest_server.start(), self._grpc_server.start(self.max_threads)]
        self.setup_event_loop()
        self.register_signal_handler()
        asyncio.run(self._serve())
