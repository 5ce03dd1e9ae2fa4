"""BoundedExecutor: admits workers + queue calls, refuses the next at once, frees slots exactly."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable

import pytest

from lumen.config import ExecutorSettings
from lumen.errors import Busy
from lumen.executors import BoundedExecutor, Executors
from tests.support.waiting import wait_until_async

WAIT_S = 10.0


class Gate:
    """Blocking calls that wait for a test to open the gate; counts the ones started."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.started = threading.Semaphore(0)

    def block(self, value: int) -> int:
        self.started.release()
        if not self.opened.wait(WAIT_S):
            raise TimeoutError("the test never opened the gate")
        return value

    def wait_started(self, n: int) -> None:
        for _ in range(n):
            assert self.started.acquire(timeout=WAIT_S), "a call never started"


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())


def test_a_full_pool_refuses_the_next_call_at_once_with_busy() -> None:
    async def scenario() -> None:
        pool, gate = (
            BoundedExecutor("password hashing", workers=2, queue=1, retry_after_s=3),
            Gate(),
        )
        futures = [pool.submit(gate.block, i) for i in range(3)]
        gate.wait_started(2)
        with pytest.raises(Busy) as caught:
            pool.submit(gate.block, 99)
        assert caught.value.status == 503
        assert caught.value.code == "busy"
        assert caught.value.retry_after_s == 3
        assert "password hashing" in caught.value.message
        gate.opened.set()
        assert await asyncio.gather(*futures) == [0, 1, 2]
        pool.shutdown()

    run(scenario)


def test_finished_calls_free_their_slots() -> None:
    async def scenario() -> None:
        pool, gate = BoundedExecutor("pdf", workers=1, queue=0), Gate()
        gate.opened.set()
        for i in range(5):
            assert await pool.run(gate.block, i) == i
        assert pool.pending == 0
        pool.shutdown()

    run(scenario)


def test_a_call_that_raises_frees_its_slot_and_the_caller_sees_the_error() -> None:
    def boom() -> None:
        raise ValueError("broken")

    async def scenario() -> None:
        pool = BoundedExecutor("gemini", workers=1, queue=0)
        with pytest.raises(ValueError, match="broken"):
            await pool.run(boom)
        assert pool.pending == 0
        pool.shutdown()

    run(scenario)


def test_a_caller_giving_up_on_a_queued_call_frees_its_slot() -> None:
    async def scenario() -> None:
        pool, gate = BoundedExecutor("blocking", workers=1, queue=1), Gate()
        running = pool.submit(gate.block, 1)
        gate.wait_started(1)
        queued = pool.submit(gate.block, 2)
        queued.cancel()
        await wait_until_async(lambda: pool.pending == 1, WAIT_S, "one call pending")
        third = pool.submit(gate.block, 3)
        gate.opened.set()
        assert await running == 1
        assert await third == 3
        pool.shutdown()

    run(scenario)


def test_a_caller_giving_up_on_a_running_call_keeps_the_slot_until_it_ends() -> None:
    async def scenario() -> None:
        pool, gate = BoundedExecutor("blocking", workers=1, queue=0), Gate()
        running = pool.submit(gate.block, 1)
        gate.wait_started(1)
        running.cancel()
        with pytest.raises(Busy):
            pool.submit(gate.block, 2)
        gate.opened.set()
        await wait_until_async(lambda: pool.pending == 0, WAIT_S, "no call pending")
        assert await pool.run(gate.block, 3) == 3
        pool.shutdown()

    run(scenario)


def test_one_full_pool_does_not_stop_another() -> None:
    async def scenario() -> None:
        pools = Executors(ExecutorSettings.model_validate({"password": {"workers": 1, "queue": 0}}))
        gate = Gate()
        stuck = pools.password.submit(gate.block, 1)
        gate.wait_started(1)
        with pytest.raises(Busy):
            pools.password.submit(gate.block, 2)
        assert await pools.blocking.run(lambda: "token checked") == "token checked"
        gate.opened.set()
        assert await stuck == 1
        pools.shutdown()

    run(scenario)


def test_a_pool_needs_a_worker() -> None:
    with pytest.raises(ValueError):
        BoundedExecutor("x", workers=0, queue=4)
