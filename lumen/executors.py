"""Bounded thread pools for blocking work: a full pool refuses at once (Busy), never queues.

Each kind of blocking work (password hashing, PDF rendering, Gemini calls, other Redis and
file work) gets its own pool, so a flood of one kind never starves the others: token checks
keep running while logins wait for Argon2. A pool admits at most `workers + queue` calls;
the next one gets `Busy` (503 with Retry-After) without waiting.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar, TypeVarTuple

from lumen.config import ExecutorSettings
from lumen.errors import Busy

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class BoundedExecutor:
    """A thread pool that holds at most `workers` running and `queue` waiting calls."""

    def __init__(self, name: str, workers: int, queue: int, retry_after_s: int = 1) -> None:
        if workers < 1 or queue < 0:
            raise ValueError("a bounded executor needs workers >= 1 and queue >= 0")
        self.name = name
        self.capacity = workers + queue
        self._retry_after_s = max(1, retry_after_s)
        self._pool = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix=f"lumen-{name.replace(' ', '-')}"
        )
        self._lock = threading.Lock()
        self._pending = 0

    @property
    def pending(self) -> int:
        """Calls admitted and not yet finished (running or waiting for a thread)."""
        return self._pending

    def submit(self, fn: Callable[[*Ts], T], *args: *Ts) -> asyncio.Future[T]:
        """Admit `fn(*args)` now or raise Busy; the result as an awaitable of the running loop.

        The slot is held until the function has really finished (or was cancelled before it
        started), so a caller that gives up early never lets more than `capacity` calls in.
        """
        with self._lock:
            if self._pending >= self.capacity:
                raise Busy(
                    f"the server is busy ({self.name}); try again in {self._retry_after_s} s",
                    self._retry_after_s,
                )
            self._pending += 1
        try:
            future = self._pool.submit(fn, *args)
        except BaseException:
            self._release(None)
            raise
        future.add_done_callback(self._release)
        return asyncio.wrap_future(future)

    async def run(self, fn: Callable[[*Ts], T], *args: *Ts) -> T:
        """`fn(*args)` on a pool thread; Busy at once when the pool is full."""
        return await self.submit(fn, *args)

    def shutdown(self, wait: bool = False) -> None:
        """Stop taking work; calls still waiting for a thread are cancelled."""
        self._pool.shutdown(wait=wait, cancel_futures=True)

    def _release(self, _: Future[T] | None) -> None:
        with self._lock:
            self._pending -= 1


class Executors:
    """The process's pools, one per kind of blocking work, sized by `ExecutorSettings`."""

    def __init__(self, settings: ExecutorSettings) -> None:
        retry = settings.busy_retry_after_s

        def pool(name: str, workers: int, queue: int) -> BoundedExecutor:
            return BoundedExecutor(name, workers, queue, retry)

        self.password = pool("password hashing", settings.password.workers, settings.password.queue)
        self.pdf = pool("PDF rendering", settings.pdf.workers, settings.pdf.queue)
        self.gemini = pool("Gemini answers", settings.gemini.workers, settings.gemini.queue)
        self.blocking = pool("storage work", settings.blocking.workers, settings.blocking.queue)

    def shutdown(self) -> None:
        for pool in (self.password, self.pdf, self.gemini, self.blocking):
            pool.shutdown()
