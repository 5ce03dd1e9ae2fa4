"""In-memory fakes of the dispatcher's seams: a queue, an event log, an embedder, an index."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lumen.dispatch import Alt, CommitAnswer, CommitRequest, WorkerDied
from lumen.errors import ModelMismatch
from lumen.states import ItemState
from lumen.vectors import CommitRow
from lumen.worker import EmbedResult


@dataclass(frozen=True)
class Requeued:
    user: str
    item: str
    state: ItemState


@dataclass
class FakeQueue:
    """The reliable queue's semantics without Redis: queued -> processing -> done/error."""

    queues: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    processing: dict[tuple[str, str], str] = field(default_factory=dict)
    retries: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    errors: dict[tuple[str, str], str] = field(default_factory=dict)
    done: set[tuple[str, str]] = field(default_factory=set)
    expired: list[tuple[str, str]] = field(default_factory=list)
    calls: int = 0
    claim_passes: list[list[tuple[str, int]]] = field(default_factory=list)
    depth_reads: int = 0

    def put(self, user: str, *items: str) -> None:
        self.queues[user].extend(items)

    def active_users(self) -> list[str]:
        self.calls += 1
        return sorted(u for u, q in self.queues.items() if q)

    def next_deadline(self) -> float | None:
        self.calls += 1
        return None

    def depth(self) -> dict[str, int]:
        self.depth_reads += 1
        return {
            "queued": sum(len(q) for q in self.queues.values()),
            "processing": len(self.processing),
        }

    def claim(self, user: str, n: int, worker: str, timeout_s: float) -> list[str]:
        taken, self.queues[user] = self.queues[user][:n], self.queues[user][n:]
        for item in taken:
            self.processing[(user, item)] = worker
        return taken

    def claim_many(
        self, wants: list[tuple[str, int]], worker: str, timeout_s: float
    ) -> list[list[str]]:
        self.claim_passes.append(list(wants))
        return [self.claim(user, n, worker, timeout_s) for user, n in wants]

    def _retry(self, user: str, item: str, reason: str, max_retries: int) -> ItemState:
        if (user, item) not in self.processing:
            return ItemState.GONE
        del self.processing[(user, item)]
        self.retries[(user, item)] += 1
        if self.retries[(user, item)] > max_retries:
            self.errors[(user, item)] = reason
            return ItemState.ERROR
        self.queues[user].insert(0, item)
        return ItemState.QUEUED

    def fail(self, failures: list[tuple[str, str, str]], max_retries: int) -> list[ItemState]:
        return [self._retry(u, i, r, max_retries) for u, i, r in failures]

    def requeue_expired(
        self, max_retries: int, *, owns: Callable[[str], bool] | None = None
    ) -> Sequence[Requeued]:
        self.calls += 1
        due = [(u, i) for u, i in self.expired if owns is None or owns(u)]
        self.expired = [(u, i) for u, i in self.expired if (u, i) not in due]
        return [Requeued(u, i, self._retry(u, i, "task timed out", max_retries)) for u, i in due]

    def workers_of(self, user: str, items: list[str]) -> dict[str, str]:
        return {i: self.processing[(user, i)] for i in items if (user, i) in self.processing}

    def finish(self, user: str, items: list[str]) -> list[str]:
        """What a commit does to the queue: processing -> done (only items still there)."""
        moved = [i for i in items if self.processing.pop((user, i), None) is not None]
        self.done.update((user, i) for i in moved)
        return moved


@dataclass
class FakeEvents:
    log: list[dict[str, Any]] = field(default_factory=list)

    def record(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": str(kind), **fields}
        self.log.append(event)
        return event

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.log if e["type"] == kind]


@dataclass
class FakeMetrics:
    done: int = 0
    failed: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    depth: dict[str, int] = field(default_factory=dict)
    searches: list[tuple[str, float]] = field(default_factory=list)
    repairs: int = 0

    def queue_depth(self, state: str, n: int) -> None:
        self.depth[state] = n

    def items_done(self, n: int) -> None:
        self.done += n

    def items_failed(self, kind: str, n: int) -> None:
        self.failed[kind] += n

    def search_seconds(self, route: str, seconds: float) -> None:
        self.searches.append((route, seconds))

    def index_repairs(self, n: int) -> None:
        self.repairs += n


Behaviour = Callable[[str, str], EmbedResult]


def ok(model: str = "m1", dim: int = 4) -> Behaviour:
    def make(user: str, item: str) -> EmbedResult:
        return EmbedResult(user, item, "w1", b"\0" * 4 * dim, "cap", model_id=model, dim=dim)

    return make


def broken(reason: str, permanent: bool) -> Behaviour:
    def make(user: str, item: str) -> EmbedResult:
        return EmbedResult(user, item, "w1", error=reason, permanent=permanent)

    return make


@dataclass
class FakeEmbed:
    """Per-item behaviour (default: a vector); `raises` fails the whole call instead."""

    behaviour: dict[str, Behaviour] = field(default_factory=dict)
    raises: BaseException | None = None
    calls: list[tuple[str, list[str]]] = field(default_factory=list)
    gate: asyncio.Event | None = None

    chunks: list[list[tuple[str, list[str]]]] = field(default_factory=list)

    async def embed(self, parts: list[tuple[str, list[str]]]) -> Sequence[EmbedResult]:
        self.chunks.append([(user, list(items)) for user, items in parts])
        self.calls.extend((user, list(items)) for user, items in parts)
        if self.gate is not None:
            await self.gate.wait()
        if self.raises is not None:
            raise self.raises
        return [self.behaviour.get(i, ok())(user, i) for user, items in parts for i in items]


@dataclass
class FakeIndex:
    """An idempotent commit against `FakeQueue`: done items keep their ids.

    `lose_replies` calls commit and then raise, as a reply lost on the way back would.
    """

    queue: FakeQueue
    model: str | None = None
    ids: dict[tuple[str, str], int] = field(default_factory=dict)
    mirror: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    lose_replies: int = 0
    calls: int = 0
    given: list[tuple[list[CommitRow], Alt | None]] = field(default_factory=list)
    batches: list[list[str]] = field(default_factory=list)  # the users of each commit_many
    lose_batches: int = 0  # whole commit_many calls that raise after committing

    async def commit_many(self, requests: list[CommitRequest]) -> list[CommitAnswer]:
        """Each request as `commit` would answer it (an error as the answer); the call itself
        raises, after committing, while `lose_batches` lasts."""
        self.batches.append([request[0] for request in requests])
        answers: list[CommitAnswer] = []
        for user, model_id, dim, rows, alt in requests:
            try:
                answers.append(await self.commit(user, model_id, dim, rows, alt))
            except (ModelMismatch, ConnectionError) as exc:
                answers.append(exc)
        if self.lose_batches > 0:
            self.lose_batches -= 1
            raise ConnectionError("reply lost")
        return answers

    async def commit(
        self, user: str, model_id: str, dim: int, rows: list[CommitRow], alt: Alt | None = None
    ) -> dict[str, int]:
        self.calls += 1
        self.given.append((list(rows), alt))
        if self.model is not None and self.model != model_id:
            raise ModelMismatch(f"this space holds {self.model} vectors")
        self.model = model_id
        items = [row[0] for row in rows]
        self.queue.finish(user, items)
        answer = {}
        for item in items:
            if (user, item) in self.queue.done:
                answer[item] = self.ids.setdefault((user, item), len(self.ids) + 1)
        if self.lose_replies > 0:
            self.lose_replies -= 1
            raise ConnectionError("reply lost")
        self.mirror[user].update(answer)
        return answer


__all__ = [
    "FakeEmbed",
    "FakeEvents",
    "FakeIndex",
    "FakeMetrics",
    "FakeQueue",
    "WorkerDied",
    "broken",
    "ok",
]
