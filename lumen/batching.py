"""Dynamic batching of whole chunks: many items enter and leave the batcher as one unit.

`@serve.batch` takes one call per item: for a chunk of 256 items that is 256 coroutines,
256 futures and 256 awaits on the replica's event loop, which on a fast model costs more
than the forward pass. `ChunkBatcher` takes a chunk (a list of items) in one call and
answers it with one future, while still filling each forward pass up to `max_batch_size`
across chunks from several callers:

    submit([a, b, c]) ─┐                  ┌─ pass 1: a b c d  ─> forward ─> [ra rb rc] [rd
    submit([d, e])  ───┼─> FIFO of chunks ┤
    submit([f])     ───┘                  └─ pass 2: e f      ─> forward ─>  re] [rf]

A pass runs when it is full or when its oldest item has waited `batch_wait_timeout_s`; one
pass runs at a time, and the next one fills while it runs. A chunk may span two passes. A
forward that raises fails the items of that pass only: every item's answer is its result or
its own exception, so one bad pass never fails another pass's items.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")  # what goes into a pass (a tensor)
W = TypeVar("W")  # whose it is (user, item)
R = TypeVar("R")  # what the forward answers per item

Forward = Callable[[list[T], list[W]], Awaitable[Sequence[R]]]


class _Chunk(Generic[T, W, R]):
    """One caller's items, where the next pass takes from, and the answers so far."""

    __slots__ = ("arrived", "future", "items", "owners", "remaining", "results", "taken")

    def __init__(
        self, items: list[T], owners: list[W], future: asyncio.Future[list[R | Exception]]
    ) -> None:
        self.items = items
        self.owners = owners
        self.future = future
        self.arrived = time.monotonic()
        self.taken = 0  # items[:taken] are in a pass already
        self.remaining = len(items)  # items not answered yet
        self.results: list[Any] = [None] * len(items)


class ChunkBatcher(Generic[T, W, R]):
    """Runs `forward(items, owners)` on passes of at most `max_batch_size` items, filled from
    whole chunks in arrival order (see the module docstring). `forward` must answer one
    result per item, in order; it runs on the event loop's task, so blocking work in it
    belongs on a thread (the Embedder's does one hop per pass)."""

    def __init__(
        self, forward: Forward[T, W, R], max_batch_size: int, batch_wait_timeout_s: float
    ) -> None:
        self.forward = forward
        self.set_max_batch_size(max_batch_size)
        self.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self._queue: deque[_Chunk[T, W, R]] = deque()
        self._pending = 0  # items queued and not yet in a pass
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    def set_max_batch_size(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {size}")
        self.max_batch_size = int(size)

    def set_batch_wait_timeout_s(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"batch_wait_timeout_s must be >= 0, got {seconds}")
        self.batch_wait_timeout_s = float(seconds)

    async def submit(self, chunk: Sequence[tuple[T, W]]) -> list[R | Exception]:
        """Each item's result, or the exception its pass raised, in the chunk's order."""
        if not chunk:
            return []
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[R | Exception]] = loop.create_future()
        items = [item for item, _ in chunk]
        owners = [owner for _, owner in chunk]
        self._queue.append(_Chunk(items, owners, future))
        self._pending += len(items)
        self._ensure_running(loop)
        assert self._arrived is not None
        self._arrived.set()
        return await future

    def _ensure_running(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._arrived is None:
            self._arrived = asyncio.Event()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run())

    async def _run(self) -> None:
        """Form and run passes while anything is queued; never raises (a forward's error
        answers its pass's items)."""
        arrived = self._arrived
        assert arrived is not None
        while True:
            self._drop_cancelled()
            if not self._queue:
                arrived.clear()
                await arrived.wait()
                continue
            if self._pending < self.max_batch_size:
                left = self._queue[0].arrived + self.batch_wait_timeout_s - time.monotonic()
                if left > 0:
                    arrived.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(arrived.wait(), left)
                    continue
            await self._run_pass(self._take())

    def _drop_cancelled(self) -> None:
        """Chunks whose callers gave up (cancelled) leave the queue unanswered."""
        while self._queue and self._queue[0].future.done():
            chunk = self._queue.popleft()
            self._pending -= len(chunk.items) - chunk.taken

    def _take(self) -> list[tuple[_Chunk[T, W, R], int, int]]:
        """The next pass: (chunk, start, end) spans, at most `max_batch_size` items."""
        room = self.max_batch_size
        spans: list[tuple[_Chunk[T, W, R], int, int]] = []
        while room:
            self._drop_cancelled()
            if not self._queue:
                break
            chunk = self._queue[0]
            start = chunk.taken
            end = min(len(chunk.items), start + room)
            spans.append((chunk, start, end))
            chunk.taken = end
            room -= end - start
            self._pending -= end - start
            if end == len(chunk.items):
                self._queue.popleft()
        return spans

    async def _run_pass(self, spans: list[tuple[_Chunk[T, W, R], int, int]]) -> None:
        items: list[T] = []
        owners: list[W] = []
        for chunk, start, end in spans:
            items += chunk.items[start:end]
            owners += chunk.owners[start:end]
        answers: Sequence[R | Exception]
        try:
            answers = await self.forward(items, owners)
            if len(answers) != len(items):
                raise RuntimeError(f"forward answered {len(answers)} of {len(items)} items")
        except Exception as exc:  # noqa: BLE001 - answers this pass's items, and only them
            answers = [exc] * len(items)
        pos = 0
        for chunk, start, end in spans:
            n = end - start
            chunk.results[start:end] = answers[pos : pos + n]
            pos += n
            chunk.remaining -= n
            if chunk.remaining == 0 and not chunk.future.done():
                chunk.future.set_result(chunk.results)
