"""The chunk batcher: full passes across chunks, answers in order, failures kept per pass."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import pytest

from lumen.batching import ChunkBatcher

X = TypeVar("X")


class Recorder:
    """A forward that doubles each item and remembers every pass it ran; `fail_on` makes the
    pass that contains that item raise; `gate` holds the first pass until set."""

    def __init__(self, fail_on: int | None = None, gate: asyncio.Event | None = None) -> None:
        self.passes: list[list[int]] = []
        self.owners: list[list[str]] = []
        self.fail_on = fail_on
        self.gate = gate

    async def __call__(self, items: list[int], owners: list[str]) -> Sequence[int]:
        self.passes.append(list(items))
        self.owners.append(list(owners))
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(0)
        if self.fail_on is not None and self.fail_on in items:
            raise ValueError(f"pass with {self.fail_on} failed")
        return [2 * i for i in items]


def chunk(owner: str, items: range | list[int]) -> list[tuple[int, str]]:
    return [(i, owner) for i in items]


def run(coro: Coroutine[Any, Any, X]) -> X:
    return asyncio.run(coro)


def test_passes_never_exceed_the_max_batch_size() -> None:
    forward = Recorder()

    async def go() -> list[list[int | Exception]]:
        batcher = ChunkBatcher(forward, max_batch_size=8, batch_wait_timeout_s=0.01)
        chunks = [chunk(f"u{n}", range(100 * n, 100 * n + 13)) for n in range(5)]
        return list(await asyncio.gather(*(batcher.submit(c) for c in chunks)))

    answers = run(go())
    assert forward.passes, "no pass ran"
    assert max(len(p) for p in forward.passes) <= 8
    assert sum(len(p) for p in forward.passes) == 5 * 13  # every item in exactly one pass
    assert answers == [[2 * i for i in range(100 * n, 100 * n + 13)] for n in range(5)]


def test_a_chunk_split_across_passes_gets_its_results_in_order() -> None:
    forward = Recorder()

    async def go() -> list[int | Exception]:
        batcher = ChunkBatcher(forward, max_batch_size=4, batch_wait_timeout_s=0.01)
        return await batcher.submit(chunk("alice", range(10)))

    assert run(go()) == [2 * i for i in range(10)]
    assert forward.passes == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_a_failing_forward_fails_only_the_items_of_its_pass() -> None:
    forward = Recorder(fail_on=5)

    async def go() -> list[list[int | Exception]]:
        batcher = ChunkBatcher(forward, max_batch_size=4, batch_wait_timeout_s=0.01)
        # alice's 0..5 span two passes: [0 1 2 3] ok, [4 5 | 10 11] fails, [12 13] ok
        return list(
            await asyncio.gather(
                batcher.submit(chunk("alice", range(6))),
                batcher.submit(chunk("bob", range(10, 14))),
            )
        )

    alice, bob = run(go())
    assert alice[:4] == [0, 2, 4, 6]
    assert all(isinstance(a, ValueError) for a in alice[4:])
    assert all(isinstance(b, ValueError) for b in bob[:2])
    assert bob[2:] == [24, 26]


def test_a_partial_pass_runs_after_the_wait() -> None:
    forward = Recorder()

    async def go() -> list[int | Exception]:
        batcher = ChunkBatcher(forward, max_batch_size=256, batch_wait_timeout_s=0.05)
        return await asyncio.wait_for(batcher.submit(chunk("alice", [1, 2, 3])), timeout=10)

    assert run(go()) == [2, 4, 6]
    assert forward.passes == [[1, 2, 3]]


def test_chunks_of_several_users_share_a_pass() -> None:
    gate = asyncio.Event()
    forward = Recorder(gate=gate)

    async def go() -> list[list[int | Exception]]:
        batcher = ChunkBatcher(forward, max_batch_size=6, batch_wait_timeout_s=10.0)
        first = asyncio.ensure_future(batcher.submit(chunk("warm", range(6))))  # a full pass
        await asyncio.sleep(0.01)  # ... held by the gate while three users queue
        rest = [
            asyncio.ensure_future(batcher.submit(chunk(u, range(10 * n, 10 * n + 2))))
            for n, u in enumerate(("alice", "bob", "carol"), start=1)
        ]
        await asyncio.sleep(0.01)
        gate.set()
        return list(await asyncio.gather(first, *rest))

    answers = run(go())
    assert forward.passes == [list(range(6)), [10, 11, 20, 21, 30, 31]]
    assert forward.owners[1] == ["alice", "alice", "bob", "bob", "carol", "carol"]
    assert answers[1:] == [[20, 22], [40, 42], [60, 62]]


def test_a_smaller_max_batch_size_applies_to_the_next_pass() -> None:
    forward = Recorder()

    async def go() -> list[int | Exception]:
        batcher = ChunkBatcher(forward, max_batch_size=32, batch_wait_timeout_s=0.0)
        await batcher.submit(chunk("alice", range(20)))
        batcher.set_max_batch_size(3)
        batcher.set_batch_wait_timeout_s(0.01)
        return await batcher.submit(chunk("alice", range(7)))

    assert run(go()) == [2 * i for i in range(7)]
    assert forward.passes == [list(range(20)), [0, 1, 2], [3, 4, 5], [6]]


def test_a_cancelled_chunk_never_reaches_a_pass() -> None:
    gate = asyncio.Event()
    forward = Recorder(gate=gate)

    async def go() -> list[int | Exception]:
        batcher = ChunkBatcher(forward, max_batch_size=2, batch_wait_timeout_s=0.0)
        first = asyncio.ensure_future(batcher.submit(chunk("warm", [1, 2])))
        await asyncio.sleep(0.01)
        gone = asyncio.ensure_future(batcher.submit(chunk("gone", [3, 4])))
        await asyncio.sleep(0.01)
        gone.cancel()
        kept = asyncio.ensure_future(batcher.submit(chunk("kept", [5])))
        await asyncio.sleep(0.01)
        gate.set()
        await first
        return await kept

    assert run(go()) == [10]
    assert forward.passes == [[1, 2], [5]]


def test_a_forward_answering_too_few_items_fails_that_pass() -> None:
    async def short(items: list[int], owners: list[str]) -> list[int]:
        return items[:-1]

    async def go() -> list[int | Exception]:
        batcher = ChunkBatcher(short, max_batch_size=4, batch_wait_timeout_s=0.0)
        return await batcher.submit(chunk("alice", [1, 2]))

    answers = run(go())
    assert len(answers) == 2 and all(isinstance(a, RuntimeError) for a in answers)


@pytest.mark.parametrize("size", [0, -1])
def test_a_max_batch_size_below_one_is_refused(size: int) -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        ChunkBatcher(Recorder(), max_batch_size=size, batch_wait_timeout_s=0.0)
