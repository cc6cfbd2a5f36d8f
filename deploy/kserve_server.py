"""kserve's ModelServer on a chosen address, bounded per request and as a whole.

kserve 0.21 binds REST to 0.0.0.0 and gRPC to [::]; :class:`HostModelServer` binds both
to ``host`` (loopback by default in ``deploy.serve``). Its changes to kserve's servers:

- Per request: bodies over ``max_body`` (binary) or ``max_json`` (JSON) get a 413 before
  they are read, and a slow sender is cut off with a 408 (``deploy.kserve_limits``).
- As a whole: REST bodies and gRPC messages hold shares of one byte budget while they are
  served, and images hold shares of a pixel budget while they decode (``deploy.budget``).
  A request that waits longer than the budget's wait gets a 503 with ``Retry-After`` (gRPC:
  UNAVAILABLE), with one WARNING line. Health and metadata never wait.
- The v2 infer route is ours (:class:`_Endpoints`, registered ahead of kserve's own): it
  reads the body as bytes and decodes it in a worker thread (``deploy.kserve_decode``).
  ``/predictions/googlenet`` takes one image as TorchServe does and answers
  ``{label: probability}``.
- gRPC runs on a thread and event loop of its own, its messages parsed in worker threads
  once they hold their share of the budget (``deploy.kserve_grpc``): REST health answers
  while gRPC parses.
- A refused request (4xx, gRPC INVALID_ARGUMENT, NOT_FOUND) logs one WARNING line, and a
  runtime that fails while serving (a ``ToolkitError``, such as ``InferenceError``) is
  answered as the server's fault, HTTP 500 or gRPC INTERNAL, with its one-line message
  and one ERROR line: kserve logs a traceback for each.
"""

from __future__ import annotations

import asyncio
import logging

from deploy.budget import Budget, ServerBusy
from deploy.kserve_decode import decode_rest, read_body
from deploy.kserve_grpc import REFUSALS, ThreadedGRPCServer
from deploy.kserve_import import command_line_hidden
from deploy.kserve_limits import RequestLimits, timed_http
from deploy.kserve_models import IMAGE_MODEL, TENSOR_MODEL, plain_image_request, top_classes
from runtimes.errors import ToolkitError, first_line

with command_line_hidden():
    from fastapi import Request, Response
    from fastapi.responses import JSONResponse
    from kserve import ModelServer
    from kserve.errors import ModelNotFound
    from kserve.logging import logger
    from kserve.model_server import FASTAPI_APP_IMPORT_STRING, app
    from kserve.protocol.rest.server import RESTServer
    from kserve.protocol.rest.v2_endpoints import V2Endpoints


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
        app.add_exception_handler(ServerBusy, _busy_answer)


def _http_answer(status: int, level: int):
    """An exception handler: one log line at ``level``, and ``{"error": message}`` with ``status``."""

    async def handler(request: Request, exc: Exception) -> JSONResponse:
        message = first_line(exc)
        logger.log(level, "%s %s %s: %d %s", "refused" if status < 500 else "failed", request.method,
                   request.url.path, status, message)
        return JSONResponse({"error": message}, status_code=status)

    return handler


async def _busy_answer(request: Request, exc: ServerBusy) -> JSONResponse:
    """A 503 with Retry-After: a budget stayed full (decoded pixels; bytes are refused in RequestLimits)."""
    logger.warning("refused %s %s: 503 %s", request.method, request.url.path, exc)
    return JSONResponse({"error": str(exc)}, status_code=503, headers={"Retry-After": str(exc.retry_after_s)})


class HostModelServer(ModelServer):
    """kserve's ModelServer with REST and gRPC on ``host``; bodies limited to ``max_body`` bytes, JSON to
    ``max_json``; a slow sender cut off after ``header_timeout`` or ``body_timeout`` seconds; request bytes
    held to ``inflight_bytes`` in all, a request waiting at most ``wait_s`` for its share; at most
    ``max_grpc_calls`` gRPC calls at once."""

    def __init__(self, host: str, *, max_body: int, max_json: int, header_timeout: float, body_timeout: float,
                 inflight_bytes: int, wait_s: float, max_grpc_calls: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.host, self.max_body, self.max_json = host, max_body, max_json
        self.header_timeout, self.body_timeout = header_timeout, body_timeout
        self.budget = Budget(inflight_bytes, unit="bytes", flag="--max-inflight-mb", wait_s=wait_s)
        self.max_grpc_calls = max_grpc_calls

    def start(self, models) -> None:
        for model in models:
            if not model.ready:
                raise RuntimeError(f"model {model.name} is not loaded")
            self.register_model(model)
        app.add_middleware(RequestLimits, max_body=self.max_body, max_json=self.max_json, budget=self.budget)
        self._rest_server = _RESTServer(
            FASTAPI_APP_IMPORT_STRING, self.dataplane, self.model_repository_extension, self.http_port,
            grace_period=self.grace_period, timeout_keep_alive=self.timeout_keep_alive,
        )
        self._rest_server.config.host = self.host  # read when uvicorn binds, after this
        self._rest_server.config.http = timed_http(self.header_timeout, self.body_timeout)  # read at load, too
        self._grpc_server = ThreadedGRPCServer(
            self.host, self.max_body, self.budget, self.max_grpc_calls, self.grpc_port, self.dataplane, self.model_repository_extension,
            kwargs={}, grace_period=self.grace_period,
        )
        self.servers = [self._rest_server.start(), self._grpc_server.start(self.max_threads)]
        self.setup_event_loop()
        self.register_signal_handler()
        asyncio.run(self._serve())
