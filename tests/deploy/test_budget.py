"""deploy.budget: one bound for what every request holds, shared by threads and event loops."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from deploy.budget import Budget, ServerBusy


def budget(total: int = 10, wait_s: float = 0.3) -> Budget:
    return Budget(total, unit="bytes", flag="--max-inflight-mb", wait_s=wait_s)


def test_a_request_waits_for_its_share_then_is_refused_in_one_line():
    b = budget(10, wait_s=0.2)
    with b.hold(8, "first"):
        start = time.monotonic()
        with pytest.raises(ServerBusy) as refused:
            with b.hold(5, "a request body of 5 bytes"):
                pass
        waited = time.monotonic() - start
    assert 0.15 < waited < 2
    assert str(refused.value) == ("server busy: a request body of 5 bytes needs 5 bytes and the server's 10 "
                                  "(--max-inflight-mb) stayed in use for 0.2 s; retry later")
    assert refused.value.retry_after_s == 1
    assert (b.used, b.peak, b.refused) == (0, 8, 1)


def test_a_waiting_request_is_let_in_when_a_share_is_given_back():
    b = budget(10, wait_s=5)
    first = b.hold(8, "first")
    first.__enter__()
    got = []

    def second():
        with b.hold(5, "second"):
            got.append(b.used)

    thread = threading.Thread(target=second)
    thread.start()
    time.sleep(0.1)
    assert not got  # 8 + 5 > 10: it waits
    first.__exit__(None, None, None)
    thread.join(5)
    assert got == [5] and b.used == 0 and b.peak == 8


def test_one_request_larger_than_the_budget_runs_alone_on_all_of_it():
    b = budget(10)
    with b.hold(25, "a large one"):
        assert b.used == 10
        with pytest.raises(ServerBusy):
            with b.hold(1, "a small one"):
                pass
    with b.hold(25, "again"):
        assert b.used == 10


def test_waiters_are_served_in_arrival_order_so_a_large_one_is_not_starved():
    b = budget(10, wait_s=5)
    order = []
    held = b.hold(6, "holder")
    held.__enter__()

    def request(name: str, amount: int):
        with b.hold(amount, name):
            order.append(name)
            time.sleep(0.05)

    large = threading.Thread(target=request, args=("large", 10))
    large.start()
    time.sleep(0.05)
    small = threading.Thread(target=request, args=("small", 2))  # would fit beside the holder, but waits its turn
    small.start()
    time.sleep(0.1)
    assert order == []
    held.__exit__(None, None, None)
    large.join(5)
    small.join(5)
    assert order == ["large", "small"]


def test_event_loops_on_two_threads_and_a_worker_thread_share_one_budget():
    b = budget(10, wait_s=5)
    peak_seen = []

    async def client(amount: int):
        async with b.hold_async(amount, "async"):
            peak_seen.append(b.used)
            await asyncio.sleep(0.02)

    async def clients():
        await asyncio.gather(*(client(4) for _ in range(10)))

    def loop_thread():
        asyncio.run(clients())

    def worker():
        for _ in range(10):
            with b.hold(4, "thread"):
                peak_seen.append(b.used)
                time.sleep(0.01)

    threads = [threading.Thread(target=loop_thread), threading.Thread(target=loop_thread), threading.Thread(target=worker)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert len(peak_seen) == 30
    assert max(peak_seen) <= 10 and b.peak <= 10 and b.used == 0 and b.refused == 0


def test_a_cancelled_waiter_leaves_the_queue_and_keeps_nothing():
    b = budget(10, wait_s=5)

    async def main():
        async with b.hold_async(10, "holder"):
            waiter = asyncio.create_task(b.hold_async(5, "waiter").__aenter__())
            await asyncio.sleep(0.05)
            waiter.cancel()  # the client went away
            with pytest.raises(asyncio.CancelledError):
                await waiter
        async with b.hold_async(10, "next"):  # nothing left behind: the whole budget is free
            assert b.used == 10

    asyncio.run(main())
    assert b.used == 0


def test_a_large_waiter_giving_up_lets_the_smaller_ones_behind_it_in():
    b = budget(10, wait_s=0.3)
    held = b.hold(6, "holder")
    held.__enter__()
    results = {}

    def request(name: str, amount: int, wait_s: float):
        b.wait_s = wait_s  # read when the wait starts
        start = time.monotonic()
        try:
            with b.hold(amount, name):
                results[name] = time.monotonic() - start
        except ServerBusy:
            results[name] = "busy"

    large = threading.Thread(target=request, args=("large", 10, 0.3))
    large.start()
    time.sleep(0.05)
    small = threading.Thread(target=request, args=("small", 2, 5))
    small.start()
    large.join(5)
    small.join(5)
    held.__exit__(None, None, None)
    assert results["large"] == "busy"
    assert results["small"] < 1  # let in when the large one left, not after its own 5 s


def test_a_waiter_cancelled_just_after_its_share_was_granted_gives_it_back():
    b = budget(10, wait_s=5)

    async def main():
        holder = b.hold_async(10, "holder")
        await holder.__aenter__()
        waiter = asyncio.create_task(b.hold_async(5, "waiter").__aenter__())
        await asyncio.sleep(0.05)
        await holder.__aexit__(None, None, None)  # grants the waiter its share...
        waiter.cancel()  # ...which is cancelled before it runs again
        with pytest.raises(asyncio.CancelledError):
            await waiter

    asyncio.run(main())
    assert b.used == 0
