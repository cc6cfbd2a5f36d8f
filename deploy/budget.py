"""What the whole server may hold at once: request bytes, decoded pixels.

Each of ``deploy.serve``'s limits applies to one request (``--max-body-mb``,
``--max-pixels``); a :class:`Budget` bounds what all requests hold together. REST and
gRPC run on event loops of their own, and images decode in worker threads, so a budget
is shared across threads: :meth:`Budget.hold` for a thread, :meth:`Budget.hold_async`
for a coroutine. A request waits at most ``wait_s`` seconds for its share, in arrival
order (a large request is not starved by small ones behind it), then is refused with
:class:`ServerBusy`, which the server answers with HTTP 503 and ``Retry-After`` (gRPC:
UNAVAILABLE).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import threading

from runtimes.errors import ToolkitError


class ServerBusy(ToolkitError):
    """The server's budget stayed full for the whole wait: try again later (HTTP 503, gRPC UNAVAILABLE)."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class _Waiter:
    __slots__ = ("amount", "granted", "wake")

    def __init__(self, amount: int, wake) -> None:
        self.amount, self.granted, self.wake = amount, False, wake


class Budget:
    """``total`` units of something (bytes, pixels) shared by every request of the process.

    One request may ask for more than ``total`` (a single image may be as large as
    ``--max-pixels``, whatever the budget): it is given the whole budget, alone, so the
    peak is ``max(total, largest single request)``.
    """

    def __init__(self, total: int, *, unit: str, flag: str, wait_s: float) -> None:
        if total < 1:
            raise ValueError(f"a budget needs at least 1 {unit}, got {total}")
        self.total, self.unit, self.flag, self.wait_s = total, unit, flag, wait_s
        self.used = 0
        self.peak = 0  # the most held at once since the start: the tests read it
        self.refused = 0
        self._lock = threading.Lock()
        self._queue: collections.deque[_Waiter] = collections.deque()

    def _take(self, amount: int) -> bool:
        """Under the lock: take ``amount`` now if nobody waits ahead and it fits."""
        if self._queue or (self.used and self.used + amount > self.total):
            return False
        self.used += amount
        self.peak = max(self.peak, self.used)
        return True

    def _grant_waiting(self) -> None:
        """Under the lock: grant the waiters at the head of the queue that now fit, in order."""
        while self._queue:
            head = self._queue[0]
            if self.used and self.used + head.amount > self.total:
                return
            self._queue.popleft()
            self.used += head.amount
            self.peak = max(self.peak, self.used)
            head.granted = True
            head.wake()

    def _release(self, amount: int) -> None:
        with self._lock:
            self.used -= amount
            self._grant_waiting()

    def _give_up(self, waiter: _Waiter) -> bool:
        """Under the lock, after a wait timed out: True if the waiter got its share after all."""
        if waiter.granted:
            return True
        self._queue.remove(waiter)
        self._grant_waiting()  # a large waiter leaving may let smaller ones behind it in
        self.refused += 1
        return False

    def _take_or_queue(self, amount: int, wake) -> _Waiter | None:
        """Take ``amount`` now (None), or queue a waiter that ``wake()`` will tell when it is granted."""
        with self._lock:
            if self._take(amount):
                return None
            waiter = _Waiter(amount, wake)
            self._queue.append(waiter)
            return waiter

    def _settle(self, waiter: _Waiter, what: str) -> None:
        """After the wait: keep the share if it was granted, else leave the queue and raise ServerBusy."""
        with self._lock:
            if not self._give_up(waiter):
                raise self._busy(waiter.amount, what)

    def _busy(self, amount: int, what: str) -> ServerBusy:
        return ServerBusy(
            f"server busy: {what} needs {amount:,} {self.unit} and the server's {self.total:,} ({self.flag}) stayed "
            f"in use for {self.wait_s:g} s; retry later", retry_after_s=max(1, math.ceil(self.wait_s)))

    @contextlib.contextmanager
    def hold(self, amount: int, what: str):
        """Hold ``amount`` (at most the total) while the block runs, waiting in a thread; ServerBusy after ``wait_s``."""
        amount = min(amount, self.total)
        event = threading.Event()
        waiter = self._take_or_queue(amount, event.set)
        if waiter is not None:
            event.wait(self.wait_s)
            self._settle(waiter, what)
        try:
            yield
        finally:
            self._release(amount)

    @contextlib.asynccontextmanager
    async def hold_async(self, amount: int, what: str):
        """:meth:`hold` for a coroutine: the event loop goes on serving while this request waits."""
        amount = min(amount, self.total)
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def wake() -> None:  # called under the budget's lock, perhaps from another thread
            loop.call_soon_threadsafe(lambda: future.done() or future.set_result(None))

        waiter = self._take_or_queue(amount, wake)
        if waiter is not None:
            try:
                await asyncio.wait_for(asyncio.shield(future), self.wait_s)
            except asyncio.TimeoutError:
                pass
            except BaseException:  # cancelled (the client went away): leave the queue, or give back the share
                with self._lock:
                    kept = self._give_up(waiter)
                if kept:
                    self._release(amount)
                raise
            self._settle(waiter, what)
        try:
            yield
        finally:
            self._release(amount)


# glibc's mallopt parameter: allocations from this size up are mapped on their own and given back
# to the system when freed.
_M_MMAP_THRESHOLD = -3


def give_back_freed_memory(threshold: int = 1 << 20) -> bool:
    """Make glibc map every allocation of ``threshold`` bytes or more on its own, so that memory a
    decode frees returns to the system at once (True if set; False off glibc).

    By default glibc raises this threshold, up to 32 MB, after each large free: Pillow's 16 MB
    blocks for the resize of a 132 MP image then come from per-thread heaps, which keep them
    after they are freed. The server's peak then drifted above the budget's (2.1 to 2.7 GB over
    three runs of 16 such uploads, for a budget of 2.1 GB).
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return bool(libc is not None and libc.mallopt(_M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):  # not glibc (musl, macOS): its allocator keeps its own policy
        return False
