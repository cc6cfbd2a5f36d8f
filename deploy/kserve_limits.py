"""What each REST connection may send, and how long it may take: ASGI middleware and uvicorn's protocol.

- :class:`RequestLimits` refuses a body over the limit with HTTP 413 before reading it:
  ``max_body`` for binary bodies (the binary-tensor extension, an image), the lower
  ``max_json`` for JSON, whose parse holds the interpreter for its whole length. Then it
  holds the body's share of the server's byte budget (``deploy.budget``) until the answer
  is sent: a request that cannot get it within the budget's wait gets a 503 with
  ``Retry-After``. A request without a body (health, metadata) never waits.
- :func:`timed_http` cuts off a slow sender: a request's headers must arrive within
  ``header_timeout`` seconds of its first byte (or of the connection), and its body may
  pause no longer than ``body_timeout`` between reads. Such a connection gets a 408 (if no
  answer began) and is closed, with one WARNING line. uvicorn has no such deadline: a
  connection that trickles its headers, or sends nothing, was held for as long as the
  client liked.
"""

from __future__ import annotations

import asyncio

import orjson

from deploy.budget import Budget, ServerBusy
from deploy.kserve_decode import body_kind
from deploy.kserve_import import command_line_hidden

with command_line_hidden():
    from kserve.logging import logger

# What a body costs while it is served, in multiples of its length: parsing a JSON body
# raised the peak by 4.0x its length (two FP32 images: 5.6 MB of JSON), beside the body
# itself; a binary body is read as views of itself.
JSON_COST = 5
BINARY_COST = 1


class BodyTooLarge(Exception):
    pass


class RequestLimits:
    """ASGI middleware: refuse bodies over their limit with 413, binary or JSON; hold each body's
    share of ``budget`` while it is served, or answer 503 when the budget stays full.

    The declared Content-Length is checked before anything is read; a chunked body is
    counted as it arrives, and holds the share of the largest body it may become.
    """

    def __init__(self, app, max_body: int, max_json: int, budget: Budget) -> None:
        self.app, self.max_body, self.max_json, self.budget = app, max_body, max_json, budget

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        binary = body_kind(headers, scope["path"]) != "json"
        limit = self.max_body if binary else self.max_json
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        declared = headers.get("content-length", "0")
        if not declared.isdigit() or int(declared) > limit:
            return await self._too_large(scope, send, declared, binary)
        size = limit if chunked else int(declared)
        if not size:
            return await self._serve(scope, receive, send, limit, binary)
        try:
            async with self.budget.hold_async(size * (BINARY_COST if binary else JSON_COST),
                                              f"a request body of {size:,} bytes"):
                return await self._serve(scope, receive, send, limit, binary)
        except ServerBusy as exc:
            await busy(scope, send, exc)

    async def _serve(self, scope, receive, send, limit: int, binary: bool) -> None:
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
        await _answer(send, 413, message)


async def busy(scope, send, exc: ServerBusy) -> None:
    """A 503 with Retry-After for a request the server's budget could not take, and one WARNING line."""
    logger.warning("refused %s %s: 503 %s", scope["method"], scope["path"], exc)
    await _answer(send, 503, str(exc), [(b"retry-after", str(exc.retry_after_s).encode())])


async def _answer(send, status: int, message: str, headers=()) -> None:
    body = orjson.dumps({"error": message})
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


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
