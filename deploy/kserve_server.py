"""kserve's ModelServer on a chosen address, with request limits checked before a body is decoded.

kserve 0.21 binds REST to 0.0.0.0 and gRPC to [::]; :class:`HostModelServer` binds both
to ``host`` (loopback by default in ``deploy.serve``). Its changes to kserve's servers:

- :class:`RequestLimits` refuses a body over the limit with HTTP 413 before reading it:
  ``max_body`` for binary bodies (the binary-tensor extension, an image), the lower
  ``max_json`` for JSON, whose parse holds the interpreter for its whole length.
- The v2 infer route is ours (:class:`_Endpoints`, registered ahead of kserve's own): it
  reads the body as bytes and decodes it in a worker thread (:func:`decode_rest`); kserve's
  parses JSON and converts binary inputs to Python lists on the event loop. A
  body is the binary extension when it has an Inference-Header-Content-Length header,
  one image for ``googlenet-image`` when its Content-Type is ``image/*`` or
  ``application/octet-stream``, and JSON otherwise. ``/predictions/googlenet`` takes one
  image as TorchServe does and answers ``{label: probability}``.
- gRPC requests go through kserve's servicer. grpc copies and parses each message on the
  event loop (0.2 s for 64 MB on the 2-core development machine), so ``max_body``, the
  gRPC message limit too, bounds that stall.
- A slow sender is cut off (:func:`timed_http`): a request's headers must arrive within
  ``header_timeout`` seconds of its first byte (or of the connection), and its body may
  pause no longer than ``body_timeout`` between reads. Such a connection gets a 408 (if no
  answer began) and is closed, with one WARNING line. uvicorn has no such deadline: a
  connection that trickles its headers, or sends nothing, was held for as long as the
  client liked.
- A refused request (4xx, gRPC INVALID_ARGUMENT, NOT_FOUND) logs one WARNING line, and a
  runtime that fails while serving (a ``ToolkitError``, such as ``InferenceError``) is
  answered as the server's fault, HTTP 500 or gRPC INTERNAL, with its one-line message
  and one ERROR line: kserve logs a traceback for each.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent import futures

import orjson
import pydantic
from grpc import StatusCode, aio

from deploy.kserve_import import command_line_hidden
from deploy.kserve_models import IMAGE_MODEL, TENSOR_MODEL, plain_image_request, top_classes
from runtimes.errors import ToolkitError, first_line

with command_line_hidden():
    from fastapi import Request, Response
    from fastapi.responses import JSONResponse
    from kserve import InferInput, InferRequest, ModelServer
    from kserve.errors import InvalidInput, ModelNotFound, ModelNotReady
    from kserve.logging import logger
    from kserve.model_server import FASTAPI_APP_IMPORT_STRING, app
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
    from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor, LoggingInterceptor
    from kserve.protocol.grpc.server import GRPCServer
    from kserve.protocol.grpc.servicer import InferenceServicer
    from kserve.protocol.infer_type import RequestedOutput, to_np_dtype
    from kserve.protocol.rest.server import RESTServer
    from kserve.protocol.rest.v2_endpoints import V2Endpoints
    from kserve.protocol.rest.v2_datamodels import InferenceRequest

BINARY_HEADER = "inference-header-content-length"
PLAIN_TYPES = ("image/", "application/octet-stream")  # a body of one image, without the binary header
# A refused request: its exception, HTTP status and gRPC status.
REFUSALS = ((InvalidInput, 400, StatusCode.INVALID_ARGUMENT), (ModelNotFound, 404, StatusCode.NOT_FOUND),
            (ModelNotReady, 503, StatusCode.UNAVAILABLE))


def body_kind(headers: dict[str, str], path: str = "") -> str:
    """"binary" (the binary-tensor extension), "image" (one image as the whole body: an image or
    octet-stream Content-Type, or TorchServe's ``/predictions`` route) or "json"."""
    if BINARY_HEADER in headers:
        return "binary"
    if path.startswith("/predictions/") or headers.get("content-type", "").lower().startswith(PLAIN_TYPES):
        return "image"
    return "json"


class BodyTooLarge(Exception):
    pass


class RequestLimits:
    """ASGI middleware: refuse bodies over their limit with 413, binary or JSON.

    The declared Content-Length is checked before anything is read; a chunked body is
    counted as it arrives.
    """

    def __init__(self, app, max_body: int, max_json: int) -> None:
        self.app, self.max_body, self.max_json = app, max_body, max_json

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        binary = body_kind(headers, scope["path"]) != "json"
        limit = self.max_body if binary else self.max_json
        declared = headers.get("content-length", "0")
        if not declared.isdigit() or int(declared) > limit:
            return await self._too_large(scope, send, declared, binary)
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
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
                await self._too_large(scope, send, f"over {received}", binary)

    async def _too_large(self, scope, send, size: str, binary: bool) -> None:
        if binary:
            rule = f"this server takes at most {self.max_body} (--max-body-mb)"
        else:
            rule = (f"this server takes at most {self.max_json} as JSON (--max-json-mb), and {self.max_body} "
                    "(--max-body-mb) as binary tensors (the Inference-Header-Content-Length extension)")
        message = f"request body of {size} bytes; {rule}"
        logger.warning("refused %s %s: 413 %s", scope["method"], scope["path"], message)
        body = orjson.dumps({"error": message})
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _mapping(value, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{where} must be a JSON object, got {type(value).__name__}")
    return value


def _shape(value, name: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value):
        raise InvalidInput(f"input {name!r}: shape must be a list of non-negative integers, got {value!r:.80}")
    return value


def _binary_input(spec, body: bytearray, offset: int) -> tuple[InferInput, memoryview | None]:
    """One input of a binary-extension header, with a view of its raw bytes from ``offset`` (None: JSON ``data``)."""
    name = spec["name"]
    parameters = dict(_mapping(spec.get("parameters"), f"input {name!r} parameters"))
    datatype = spec["datatype"]
    if not isinstance(datatype, str) or to_np_dtype(datatype.upper()) is None:
        raise InvalidInput(f"input {name!r}: unknown datatype {datatype!r}")
    tensor = InferInput(name, _shape(spec["shape"], name), datatype, parameters=parameters)
    if "data" in spec:
        if not isinstance(spec["data"], list):
            raise InvalidInput(f"input {name!r}: data must be a JSON array, got {type(spec['data']).__name__}")
        tensor.data = spec["data"]
        return tensor, None
    size = parameters.pop("binary_data_size", None)
    if not isinstance(size, int) or size < 0 or offset + size > len(body):
        raise InvalidInput(f"input {name!r} declares {size!r} bytes of binary data; the body has {len(body) - offset} left")
    return tensor, memoryview(body)[offset:offset + size]


def decode_binary(body: bytearray, declared: str, model_name: str) -> InferRequest:
    """A binary-extension request, each input a view of its bytes in the body.

    kserve 0.21 turns each binary input into a JSON-style Python list: 70 ms for one
    224x224 image, and a 500 for a BYTES input that is not UTF-8 (an encoded image).
    Here a binary input keeps its bytes, as a gRPC request's do, not even copied (a
    64 MB copy holds the interpreter for 40 ms), and the model checks their size
    against the declared shape before reading them.
    """
    if not declared.isdigit() or int(declared) > len(body):
        raise InvalidInput(f"header {BINARY_HEADER}: {declared!r} is not a length within the {len(body)}-byte body")
    offset = int(declared)
    try:
        header = _mapping(orjson.loads(body[:offset]), "the binary inference request header")
        inputs, raw = [], []
        for spec in header["inputs"]:
            tensor, data = _binary_input(spec, body, offset)
            if data is not None:
                raw.append(data)
                offset += len(data)
            inputs.append(tensor)
        outputs = [RequestedOutput(o["name"], _mapping(o.get("parameters"), "output parameters"))
                   for o in header.get("outputs") or []]
        parameters = _mapping(header.get("parameters"), "request parameters")
        request_id = header.get("id")
        if request_id is not None and not isinstance(request_id, str):
            raise TypeError(f"id must be a string, got {type(request_id).__name__}")
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise InvalidInput(f"malformed binary inference request header: {type(exc).__name__}: {exc}") from None
    if offset != len(body):
        raise InvalidInput(f"the body has {len(body) - offset} bytes after the declared binary data")
    if raw and len(raw) != len(inputs):
        raise InvalidInput("send every input as binary data, or none")
    return InferRequest(model_name, inputs, request_id=request_id, raw_inputs=raw or None,
                        parameters=parameters, request_outputs=outputs or None)


def decode_json(body: bytearray, model_name: str) -> InferRequest:
    """A JSON request, validated with kserve's own schema; the first problem in one line."""
    try:
        request = InferenceRequest.model_validate_json(body)
    except pydantic.ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(map(str, error["loc"]))
        hint = ""
        if error["type"] == "json_invalid" and model_name == IMAGE_MODEL:
            hint = "; to send one image as the body, give it Content-Type image/* or application/octet-stream"
        raise InvalidInput(f"malformed JSON inference request: {where + ': ' if where else ''}{error['msg']}{hint}") from None
    return InferRequest.from_inference_request(request, model_name)


def decode_rest(body: bytearray, headers: dict[str, str], model_name: str) -> InferRequest:
    """A REST v2 infer body as kserve's InferRequest; run in a worker thread, off the event loop."""
    kind = body_kind(headers)
    if kind == "binary":
        return decode_binary(body, headers[BINARY_HEADER], model_name)
    if kind == "image":
        if model_name != IMAGE_MODEL:
            raise InvalidInput(f"a body of raw bytes without the {BINARY_HEADER} header is one image, for model "
                               f"{IMAGE_MODEL!r}; send {model_name!r} a JSON or binary-extension request")
        return plain_image_request(body)
    return decode_json(body, model_name)


async def read_body(request: Request) -> bytearray:
    """The body, gathered chunk by chunk into one buffer.

    Starlette joins the chunks at the end, one copy of the whole body that holds the
    interpreter (60 ms for 64 MB) while health checks wait.
    """
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
    return body


class _Endpoints(V2Endpoints):
    """The v2 infer route with the body decoded off the event loop, and TorchServe's ``/predictions``."""

    async def infer_body(self, raw_request: Request, raw_response: Response, model_name: str,
                         model_version: str | None = None):
        await self.dataplane.model_ready(model_name, True)  # an unknown model: 404 before the body is decoded
        body = await read_body(raw_request)
        request = await asyncio.to_thread(decode_rest, body, dict(raw_request.headers), model_name)
        return await self.infer(raw_request, raw_response, model_name, request, model_version)

    async def predictions(self, raw_request: Request, model_name: str) -> JSONResponse:
        if model_name not in (TENSOR_MODEL, IMAGE_MODEL):
            raise ModelNotFound(model_name)
        request = await asyncio.to_thread(plain_image_request, await read_body(raw_request))
        response, _ = await self.dataplane.infer(IMAGE_MODEL, request, dict(raw_request.headers))
        return JSONResponse(top_classes(response))


class _RESTServer(RESTServer):
    """kserve's REST server with our infer routes first (so kserve's never match) and one-line errors."""

    def _register_endpoints(self, app) -> None:
        endpoints = _Endpoints(self.dataplane, self.model_repository_extension)
        for path in ("/v2/models/{model_name}/infer", "/v2/models/{model_name}/versions/{model_version}/infer"):
            app.add_api_route(path, endpoints.infer_body, methods=["POST"], response_model=None)
        app.add_api_route("/predictions/{model_name}", endpoints.predictions, methods=["POST", "PUT"])
        super()._register_endpoints(app)

    def _add_exception_handlers(self, app) -> None:
        super()._add_exception_handlers(app)
        for kind, status, _ in REFUSALS:
            app.add_exception_handler(kind, _http_answer(status, logging.WARNING))
        app.add_exception_handler(ToolkitError, _http_answer(500, logging.ERROR))


def _http_answer(status: int, level: int):
    """An exception handler: one log line at ``level``, and ``{"error": message}`` with ``status``."""

    async def handler(request: Request, exc: Exception) -> JSONResponse:
        message = first_line(exc)
        logger.log(level, "%s %s %s: %d %s", "refused" if status < 500 else "failed", request.method,
                   request.url.path, status, message)
        return JSONResponse({"error": message}, status_code=status)

    return handler


class _OneLineStatus(ExceptionToStatusInterceptor):
    """kserve's exception-to-status mapping, with one log line per refusal and a runtime failure as INTERNAL."""

    async def handle_exception(self, ex, request_or_iterator, context, method_name) -> None:
        for kind, _, code in REFUSALS:
            if isinstance(ex, kind):
                logger.warning("refused %s: %s %s", method_name, code.name, first_line(ex))
                return await context.abort(code, first_line(ex))
        if isinstance(ex, ToolkitError):
            logger.error("failed %s: INTERNAL %s", method_name, first_line(ex))
            return await context.abort(StatusCode.INTERNAL, first_line(ex))
        await super().handle_exception(ex, request_or_iterator, context, method_name)


class _HostGRPCServer(GRPCServer):
    """kserve's gRPC server (same servicer, one-line errors), listening on ``host`` only."""

    def __init__(self, host: str, max_message: int, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._host, self._max_message = host, max_message

    async def start(self, max_workers: int) -> None:
        self._server = aio.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            interceptors=(LoggingInterceptor(), _OneLineStatus()),
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


def timed_http(header_timeout: float, body_timeout: float):
    """uvicorn's httptools protocol with a deadline for each request's headers and for each pause in
    its body; a sender past one gets a 408 (when no answer began) and its connection is closed."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class TimedHttp(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None

        def _arm(self, seconds: float, what: str, flag: str) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(seconds, self._expired, seconds, what, flag)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm(header_timeout, "the request's headers", "--header-timeout-s")  # one that sends nothing too

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm(header_timeout, "the request's headers", "--header-timeout-s")

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            self._arm(body_timeout, "more of the request's body", "--body-timeout-s")

        def on_body(self, body: bytes) -> None:
            super().on_body(body)
            self._arm(body_timeout, "more of the request's body", "--body-timeout-s")

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._disarm()

        def _expired(self, seconds: float, what: str, flag: str) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            if self.flow.read_paused:  # the server has not taken what arrived: not the sender's delay
                self._arm(seconds, what, flag)
                return
            client = "%s:%d" % self.client if self.client else "a client"
            logger.warning("refused %s: 408 %s did not arrive within %g s (%s); connection closed",
                           client, what, seconds, flag)
            if self.cycle is None or not self.cycle.response_started:
                self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            self.transport.close()

    return TimedHttp


class HostModelServer(ModelServer):
    """kserve's ModelServer with REST and gRPC on ``host``; bodies limited to ``max_body`` bytes, JSON to
    ``max_json``; a slow sender cut off after ``header_timeout`` or ``body_timeout`` seconds."""

    def __init__(self, host: str, *, max_body: int, max_json: int, header_timeout: float, body_timeout: float,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.host, self.max_body, self.max_json = host, max_body, max_json
        self.header_timeout, self.body_timeout = header_timeout, body_timeout

    def start(self, models) -> None:
        for model in models:
            if not model.ready:
                raise RuntimeError(f"model {model.name} is not loaded")
            self.register_model(model)
        app.add_middleware(RequestLimits, max_body=self.max_body, max_json=self.max_json)
        self._rest_server = _RESTServer(
            FASTAPI_APP_IMPORT_STRING, self.dataplane, self.model_repository_extension, self.http_port,
            grace_period=self.grace_period, timeout_keep_alive=self.timeout_keep_alive,
        )
        self._rest_server.config.host = self.host  # read when uvicorn binds, after this
        self._rest_server.config.http = timed_http(self.header_timeout, self.body_timeout)  # read at load, too
        self._grpc_server = _HostGRPCServer(
            self.host, self.max_body, self.grpc_port, self.dataplane, self.model_repository_extension,
            kwargs={}, grace_period=self.grace_period,
        )
        self.servers = [self._rest_server.start(), self._grpc_server.start(self.max_threads)]
        self.setup_event_loop()
        self.register_signal_handler()
        asyncio.run(self._serve())
