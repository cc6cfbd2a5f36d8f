"""kserve's gRPC server on a thread and event loop of its own, its messages held to the server's byte budget.

- grpc copies each message out of its transport and parses it on the event loop that
  serves the call (0.2 s for 64 MB on the 2-core development machine). With REST on the
  same loop, 50 such messages at once stalled REST health for 15 s. Here gRPC has its own
  loop, on its own thread: REST health waits at most for the one parse holding the
  interpreter, not for a queue of them.
- ``ModelInfer`` takes its message as bytes (:class:`BudgetedInfer`): it holds the
  message's share of the byte budget that REST bodies share too (``deploy.budget``), and
  only then is the message parsed, in a worker thread. A call that cannot get its share
  within the budget's wait is refused with UNAVAILABLE and a ``retry-after`` trailer.
- A refused request (INVALID_ARGUMENT, NOT_FOUND, UNAVAILABLE) logs one WARNING line, and
  a runtime that fails while serving (a ``ToolkitError``) is answered INTERNAL with its
  one-line message and one ERROR line (:class:`OneLineStatus`): kserve logs a traceback
  for each.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from concurrent import futures

import grpc
from grpc import StatusCode, aio

from deploy.budget import Budget, ServerBusy
from deploy.kserve_import import command_line_hidden
from runtimes.errors import ToolkitError, first_line

with command_line_hidden():
    from kserve.errors import InvalidInput, ModelNotFound, ModelNotReady
    from kserve.logging import logger
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
    from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor, LoggingInterceptor
    from kserve.protocol.grpc.server import GRPCServer
    from kserve.protocol.grpc.servicer import InferenceServicer

# A refused request: its exception, HTTP status and gRPC status.
REFUSALS = ((InvalidInput, 400, StatusCode.INVALID_ARGUMENT), (ModelNotFound, 404, StatusCode.NOT_FOUND),
            (ModelNotReady, 503, StatusCode.UNAVAILABLE))
# What a gRPC message costs while it is served, in multiples of its length: the bytes grpc
# hands over, and the parsed message beside them.
GRPC_COST = 2


class OneLineStatus(ExceptionToStatusInterceptor):
    """kserve's exception-to-status mapping, with one log line per refusal and a runtime failure as INTERNAL."""

    async def handle_exception(self, ex, request_or_iterator, context, method_name) -> None:
        if isinstance(ex, ServerBusy):
            logger.warning("refused %s: UNAVAILABLE %s", method_name, ex)
            context.set_trailing_metadata((("retry-after", str(ex.retry_after_s)),))
            return await context.abort(StatusCode.UNAVAILABLE, str(ex))
        for kind, _, code in REFUSALS:
            if isinstance(ex, kind):
                logger.warning("refused %s: %s %s", method_name, code.name, first_line(ex))
                return await context.abort(code, first_line(ex))
        if isinstance(ex, ToolkitError):
            logger.error("failed %s: INTERNAL %s", method_name, first_line(ex))
            return await context.abort(StatusCode.INTERNAL, first_line(ex))
        await super().handle_exception(ex, request_or_iterator, context, method_name)


class BudgetedInfer(aio.ServerInterceptor):
    """``ModelInfer`` with its message taken as bytes, held to ``budget``, then parsed off the event loop."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or not handler_call_details.method.endswith("/ModelInfer"):
            return handler
        parse, behavior, budget = handler.request_deserializer, handler.unary_unary, self.budget

        async def infer(message: bytes, context):
            async with budget.hold_async(GRPC_COST * len(message), f"a gRPC message of {len(message):,} bytes"):
                request = await asyncio.to_thread(parse, message)
                del message
                return await behavior(request, context)

        return grpc.unary_unary_rpc_method_handler(infer, response_serializer=handler.response_serializer)


class ThreadedGRPCServer(GRPCServer):
    """kserve's gRPC server (same servicer), listening on ``host`` only, on an event loop in a thread of its own.

    At most ``max_calls`` calls are served at once (grpc's ``maximum_concurrent_rpcs``): grpc
    reads a call's whole message before any handler runs, so the messages of calls waiting
    for the byte budget are bounded by this count, not by the budget. Calls beyond it are
    refused at once with RESOURCE_EXHAUSTED, before their message is read.
    """

    def __init__(self, host: str, max_message: int, budget: Budget, max_calls: int, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._host, self._max_message, self._budget, self._max_calls = host, max_message, budget, max_calls
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_asked: asyncio.Event | None = None

    async def start(self, max_workers: int) -> None:
        """Serve on a new thread until :meth:`stop`; this coroutine, on the caller's loop, ends when the thread does."""
        started: futures.Future = futures.Future()
        done: futures.Future = futures.Future()

        def run() -> None:
            try:
                asyncio.run(self._serve(max_workers, started))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's loop, raised there
                for future in (started, done):
                    with contextlib.suppress(futures.InvalidStateError):
                        future.set_exception(exc)
            with contextlib.suppress(futures.InvalidStateError):  # cancelled: the caller stopped waiting
                done.set_result(None)

        threading.Thread(target=run, name="grpc", daemon=True).start()
        await asyncio.wrap_future(started)
        await asyncio.wrap_future(done)

    async def _serve(self, max_workers: int, started: futures.Future) -> None:
        self._loop, self._stop_asked = asyncio.get_running_loop(), asyncio.Event()
        self._server = aio.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            interceptors=(LoggingInterceptor(), OneLineStatus(), BudgetedInfer(self._budget)),
            options=[("grpc.max_send_message_length", self._max_message),
                     ("grpc.max_receive_message_length", self._max_message)],
            maximum_concurrent_rpcs=self._max_calls,
        )
        servicer = InferenceServicer(self._data_plane, self._model_repository_extension)
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, self._server)
        host = f"[{self._host}]" if ":" in self._host else self._host
        if not self._server.add_insecure_port(f"{host}:{self._port}"):
            raise OSError(f"cannot listen on {host}:{self._port} for gRPC")
        await self._server.start()
        started.set_result(None)
        await self._stop_asked.wait()
        await self._server.stop(grace=self._grace_period)  # calls in flight finish, on this loop

    async def stop(self, sig: int | None = None) -> None:
        """Ask the gRPC thread to stop; it lets calls in flight finish for the grace period, then ends."""
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed in between: already stopped
                self._loop.call_soon_threadsafe(self._stop_asked.set)
