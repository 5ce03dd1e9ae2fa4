"""Dispatch decisions: fair claiming, embedding chunks, committing, sorting failures.

The dispatcher actor is a shell around `DispatchCore`; everything that decides what happens
to an item lives here and is reached by unit tests through the Protocols below:

    claim round ──► Embed.embed(parts) ──► Commit.commit_many([(user, model, dim, rows)...])
        │                 │ WorkerDied                 │ ModelMismatch: permanent error
        │                 │ other exception: transient │ other exception: retried (idempotent)
        ▼                 ▼                            ▼
    queue.fail(...) requeues (retry count) or errors an item; events say why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from lumen.config import QueueSettings
from lumen.errors import ModelMismatch
from lumen.events import EventKind
from lumen.metrics import Metrics
from lumen.states import ItemState
from lumen.vectors import CommitRow
from lumen.worker import EmbedResult

log = logging.getLogger(__name__)

CLAIMER = "dispatcher"
MAX_REASON_CHARS = 500
COMMIT_ATTEMPTS = 3
DEPTH_EVERY_S = 1.0  # the queue-depth gauge is read at most this often


class WorkerDied(Exception):
    """The embedder replica serving a chunk died with it (the shell maps Ray's error here)."""


Part = tuple[str, list[str]]  # one user's items within a chunk


class Embed(Protocol):
    """Embeds one chunk: items of one or more users, in one request to one replica."""

    async def embed(self, parts: list[Part]) -> Sequence[EmbedResult]: ...


Rows = list[CommitRow]  # (item, vector bytes, caption[, OCR words, OCR note])
Alt = tuple[str, int, Rows]  # the same items' vectors by the active space's previous model


# One user's commit within a chunk: (user, model id, dim, rows, alt).
CommitRequest = tuple[str, str, int, Rows, Alt | None]
# Its answer: item -> id, or why it failed (`ModelMismatch`: for good; anything else: the
# call failed and may be sent again).
CommitAnswer = dict[str, int] | BaseException


class Commit(Protocol):
    """Commits a chunk's users' vectors, each request answered on its own, in order."""

    async def commit_many(self, requests: list[CommitRequest]) -> list[CommitAnswer]: ...


class Retried(Protocol):
    @property
    def user(self) -> str: ...
    @property
    def item(self) -> str: ...
    @property
    def state(self) -> ItemState: ...


class DispatchQueue(Protocol):
    """The queue operations the dispatcher needs (`lumen.storage.QueueStore` has them)."""

    def active_users(self) -> list[str]: ...
    def depth(self) -> dict[str, int]: ...
    def claim_many(
        self, wants: list[tuple[str, int]], worker: str, timeout_s: float
    ) -> list[list[str]]: ...
    def requeue_expired(
        self, max_retries: int, *, owns: Callable[[str], bool] | None = None
    ) -> Sequence[Retried]: ...
    def next_deadline(self) -> float | None: ...
    def fail(self, failures: list[tuple[str, str, str]], max_retries: int) -> list[ItemState]: ...
    def workers_of(self, user: str, items: list[str]) -> dict[str, str]: ...


class EventSink(Protocol):
    def record(self, kind: EventKind, **fields: Any) -> Any: ...


@dataclass
class RoundRobin:
    """Deficit round robin with a quantum of one chunk: users take whole turns.

    Each turn gives the next user in rotation up to a chunk of items, so a chunk usually holds
    one user's items and pays the per-user costs (a claim script, an index commit, an upsert
    into that user's index) once, as a single user's would. The next pass starts with the
    first user this one did not reach, so with n users of work queued a user waits at most
    n chunks; capacity a user leaves unused goes to the others (`split`) in the same pass.
    """

    offset: int = 0

    def plan(self, users: list[str], capacity: int, quantum: int) -> list[tuple[str, int]]:
        if not users or capacity <= 0:
            return []
        start = self.offset % len(users)
        ordered = users[start:] + users[:start]
        plan: list[tuple[str, int]] = []
        for user in ordered:
            if capacity <= 0:
                break
            take = min(quantum, capacity)
            plan.append((user, take))
            capacity -= take
        # the next pass starts with the first user this one could not reach
        self.offset = (start + len(plan)) % len(users)
        return plan


def split(users: list[str], capacity: int, max_per_user: int) -> list[tuple[str, int]]:
    """`capacity` shared evenly (at least one each, in order, while it lasts): how what the
    users of a turn left unused is offered to everyone else at once, so many light users fill
    a chunk in one more claim, not one claim each."""
    if not users or capacity <= 0:
        return []
    share = max(1, min(max_per_user, capacity // len(users)))
    plan: list[tuple[str, int]] = []
    for user in users:
        if capacity <= 0:
            break
        take = min(share, capacity)
        plan.append((user, take))
        capacity -= take
    return plan


class Failure(NamedTuple):
    """An item that did not make it, why, and whether retrying can help."""

    item: str
    reason: str
    permanent: bool


@dataclass(frozen=True)
class Pacing:
    """How much to claim: items per chunk and items in flight, from the live embedders."""

    chunk: int
    window: int


def pack(claimed: list[Part], chunk: int) -> list[list[Part]]:
    """Chunks of at most `chunk` items across users, in claim order (a user's items may span
    two chunks), so twenty users with five items each fill batches as one user with a
    hundred would: the per-request cost is paid per chunk, not per user."""
    chunks: list[list[Part]] = []
    current: list[Part] = []
    room = chunk
    for user, items in claimed:
        while items:
            take, items = items[:room], items[room:]
            current.append((user, take))
            room -= len(take)
            if room == 0:
                chunks.append(current)
                current, room = [], chunk
    if current:
        chunks.append(current)
    return chunks


def pace(settings: QueueSettings, batch_sizes: Sequence[int]) -> Pacing:
    """Chunks of one replica batch; two chunks in flight per live replica (one forming while
    one runs) and one more, so Serve sees more than its target and scales out."""
    chunk = max(batch_sizes, default=settings.dispatch_batch_size)
    chunks = max(settings.max_inflight_batches, 2 * len(batch_sizes) + 1)
    return Pacing(chunk=chunk, window=chunk * chunks)


class Replicas(Protocol):
    """The batch size of each live embedder replica (from their heartbeats)."""

    def batch_sizes(self) -> list[int]: ...


class DispatchCore:
    """Claims fairly, keeps the embedders busy, commits results and retries failures.

    Event-driven: it sleeps until woken by an enqueue (`wake`), a finished chunk, or the
    next deadline, with an idle check every `queue.idle_check_s` as a safety net, so an
    idle control plane costs a few Redis calls per check and nothing else. State lives in
    Redis: a lost chunk passes its deadline and is requeued by `sweep`, so nothing here has
    to survive a restart. Blocking queue calls run on threads. `owns` keeps a dispatcher
    shard to its users (all users when there is one shard).
    """

    def __init__(
        self,
        settings: QueueSettings,
        queue: DispatchQueue,
        events: EventSink,
        embed: Embed,
        commit: Commit,
        metrics: Metrics,
        replicas: Replicas | None = None,
        owns: Callable[[str], bool] | None = None,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.events = events
        self.embedder = embed
        self.index = commit
        self.metrics = metrics
        self.replicas = replicas
        self.owns = owns
        self.rr = RoundRobin()
        self.pacing = pace(settings, [])
        self.inflight = 0
        self.processed = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.woken = asyncio.Event()
        self.next_deadline: float | None = None
        self.sleeping = False
        self._paced_at = float("-inf")
        self._gauged_at = float("-inf")

    @property
    def capacity(self) -> int:
        return self.pacing.window

    def wake(self) -> None:
        """Something changed (an upload, a retry, a finished chunk): look again now."""
        self.woken.set()

    async def run(self) -> None:
        """Claim whenever there is room, sweep when a deadline is due; never returns."""
        while True:
            try:
                self.woken.clear()
                claimed = await self.step()
            except Exception:  # noqa: BLE001 - Redis restarting, Serve redeploying: go on
                log.exception("dispatch round failed")
                await asyncio.sleep(1.0)
                continue
            if claimed and self.inflight < self.capacity:
                continue  # there may be more queued than one round took
            await self.sleep_until_woken()

    async def step(self) -> int:
        """One pass: pace, sweep what is due, claim; returns the items claimed."""
        now = time.time()
        if now - self._paced_at >= 1.0:
            self._paced_at = now
            await asyncio.to_thread(self.refresh_pacing)
        if self.next_deadline is None or self.next_deadline <= now:
            await asyncio.to_thread(self.sweep)
        claimed = await self.round()
        self.next_deadline = await asyncio.to_thread(self.queue.next_deadline)
        return claimed

    async def sleep_until_woken(self) -> None:
        """Until `wake`, the next deadline, or the idle check, whichever comes first."""
        timeout = self.settings.idle_check_s
        if self.next_deadline is not None:
            timeout = min(timeout, max(0.01, self.next_deadline - time.time()))
        self.sleeping = True
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.woken.wait(), timeout)
        finally:
            self.sleeping = False

    def refresh_pacing(self) -> None:
        if self.replicas is not None:
            self.pacing = pace(self.settings, self.replicas.batch_sizes())

    async def round(self) -> int:
        """Claim up to the free capacity and start a task per chunk; returns items claimed."""
        free = self.capacity - self.inflight
        if free <= 0:
            return 0
        claimed = await asyncio.to_thread(self.claim, free)
        for parts in pack(claimed, self.pacing.chunk):
            self.inflight += sum(len(items) for _, items in parts)
            task = asyncio.get_running_loop().create_task(self.process(parts))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return sum(len(items) for _, items in claimed)

    async def drain(self) -> None:
        """Wait for every chunk in flight (tests, shutdown)."""
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)

    def claim(self, free: int) -> list[tuple[str, list[str]]]:
        """Whole turns in rotation (`RoundRobin`), then what the turns left unused shared by
        everyone not yet served and those who used their whole share, until the window is
        full or nobody has more: batches stay full, and most chunks hold one user."""
        s = self.settings
        users = [u for u in self.queue.active_users() if self.owns is None or self.owns(u)]
        now = time.monotonic()
        if now - self._gauged_at >= DEPTH_EVERY_S:  # a gauge: not worth a scan per round
            self._gauged_at = now
            for state, n in self.queue.depth().items():
                self.metrics.queue_depth(state, n)
        out = []
        reached: set[str] = set()
        plan = self.rr.plan(users, free, self.pacing.chunk)
        while plan:
            hungry = []
            got = self.queue.claim_many(plan, CLAIMER, s.task_timeout_s)
            for (user, n), items in zip(plan, got, strict=True):
                reached.add(user)
                if items:
                    out.append((user, items))
                    free -= len(items)
                if len(items) == n:
                    hungry.append(user)
            start = self.rr.offset % len(users)  # those not reached yet, in rotation order
            ahead = users[start:] + users[:start]
            waiting = [u for u in ahead if u not in reached] + hungry
            plan = split(waiting, free, self.pacing.chunk)
        return out

    def sweep(self) -> None:
        """Requeue (or error) items whose deadline passed; say so in events."""
        for r in self.queue.requeue_expired(self.settings.max_retries, owns=self.owns):
            if r.state == ItemState.GONE:
                continue
            self.metrics.items_failed("timeout", 1)
            self.events.record(EventKind.TASK_TIMEOUT, user=r.user, item=r.item, state=r.state)
            if r.state == ItemState.ERROR:
                self.events.record(
                    EventKind.ITEM_FAILED, user=r.user, item=r.item, reason="task timed out"
                )

    async def process(self, parts: list[Part]) -> None:
        """Embed one chunk and settle every item in it: done, requeued or errored."""
        try:
            try:
                results = await self.embedder.embed(parts)
            except WorkerDied:
                for user, items in parts:
                    await asyncio.to_thread(self.requeue_dead, user, items)
                return
            except Exception as exc:  # noqa: BLE001 - any other call failure: retry later
                log.warning("embedder call for %s failed: %r", [u for u, _ in parts], exc)
                reason = f"embedder call failed: {exc!r}"
                for user, items in parts:
                    failed = [Failure(i, reason, permanent=False) for i in items]
                    await asyncio.to_thread(self.fail, user, failed)
                return
            by_user: dict[str, list[EmbedResult]] = defaultdict(list)
            for r in results:
                by_user[r.user].append(r)
            await self.settle(by_user)
        except Exception:  # noqa: BLE001 - the deadline requeues whatever was lost here
            log.exception("processing a chunk for %s failed", [u for u, _ in parts])
        finally:
            self.inflight -= sum(len(items) for _, items in parts)
            self.wake()  # room for the next chunk

    async def settle(self, by_user: dict[str, list[EmbedResult]]) -> None:
        """Commit each user's vectors from a chunk (one `commit_many` for them all) and fail
        the rest, each user on its own."""
        try:
            await self.commit_users(
                {user: [r for r in rs if r.error is None] for user, rs in by_user.items()}
            )
        finally:
            for user, rs in by_user.items():
                failed = [Failure(r.item, r.error, r.permanent) for r in rs if r.error is not None]
                if failed:
                    await asyncio.to_thread(self.fail, user, failed)

    async def commit(self, user: str, results: list[EmbedResult]) -> None:
        """Commit one user's vectors (`commit_users` for one)."""
        await self.commit_users({user: results})

    async def commit_users(self, by_user: dict[str, list[EmbedResult]]) -> None:
        """Commit by the model that made each vector (two while a redeploy rolls over), every
        user of a chunk in one `commit_many`.

        A commit is idempotent, so one whose reply was lost is sent again; its answer names
        every item done with these vectors, including those the lost call committed. Vectors
        of another model than the user's space error out; a commit that keeps failing is left
        to the deadline sweep (the items stay in processing, or are done already).
        """
        requests: list[CommitRequest] = []
        groups: list[list[EmbedResult]] = []
        for user, results in by_user.items():
            by_model: dict[tuple[str, int, str, int], list[EmbedResult]] = defaultdict(list)
            for r in results:
                by_model[(r.model_id, r.dim, r.alt_model_id, r.alt_dim)].append(r)
            for (model_id, dim, alt_model, alt_dim), group in by_model.items():
                # the words OCR read belong to the item, not to a model: both versions carry them
                rows: Rows = [
                    (r.item, r.vector, r.caption, r.words, r.ocr_note)
                    for r in group
                    if r.vector is not None
                ]
                alt: Alt | None = None
                if alt_model:
                    alt_rows: Rows = [
                        (r.item, r.alt_vector, r.caption, r.words, r.ocr_note)
                        for r in group
                        if r.alt_vector
                    ]
                    alt = (alt_model, alt_dim, alt_rows)
                requests.append((user, model_id, dim, rows, alt))
                groups.append(group)
        if not requests:
            return
        answers = await self._commit_with_retries(requests)
        for (user, *_), group, answer in zip(requests, groups, answers, strict=True):
            if isinstance(answer, ModelMismatch):  # retrying cannot help: error out with why
                failed = [Failure(r.item, answer.message, permanent=True) for r in group]
                await asyncio.to_thread(self.fail, user, failed)
            elif isinstance(answer, BaseException):
                log.error("commit for %s failed %d times: %r", user, COMMIT_ATTEMPTS, answer)
            else:
                self.processed += len(answer)
                if answer:
                    self.metrics.items_done(len(answer))

    async def _commit_with_retries(self, requests: list[CommitRequest]) -> list[CommitAnswer]:
        """Each request's answer; a request whose call failed (not a `ModelMismatch`) is sent
        again, up to COMMIT_ATTEMPTS times, and then answered with its last error."""
        answers: list[CommitAnswer] = [AssertionError("not sent")] * len(requests)
        pending = list(range(len(requests)))
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            batch = [requests[i] for i in pending]
            try:
                got = await self.index.commit_many(batch)
            except Exception as exc:  # noqa: BLE001 - lost reply or a restarting shard
                got = [exc] * len(batch)
            retry = []
            for i, answer in zip(pending, got, strict=True):
                answers[i] = answer
                if isinstance(answer, BaseException) and not isinstance(answer, ModelMismatch):
                    retry.append(i)
            pending = retry
            if not pending or attempt == COMMIT_ATTEMPTS:
                break
            users = sorted({requests[i][0] for i in pending})
            log.warning("commit for %s failed (attempt %d); retrying", users, attempt)
            await asyncio.sleep(0.2 * attempt)
        return answers

    def fail(self, user: str, failed: list[Failure]) -> None:
        """Transient failures count a retry (error after the limit); permanent ones error now."""
        transient = [(user, f.item, f.reason[:MAX_REASON_CHARS]) for f in failed if not f.permanent]
        permanent = [(user, f.item, f.reason[:MAX_REASON_CHARS]) for f in failed if f.permanent]
        states = self.queue.fail(transient, self.settings.max_retries) if transient else []
        states += self.queue.fail(permanent, -1) if permanent else []
        if transient:
            self.metrics.items_failed("transient", len(transient))
        if permanent:
            self.metrics.items_failed("permanent", len(permanent))
        for (u, item, reason), state in zip(transient + permanent, states, strict=True):
            if state == ItemState.ERROR:
                self.events.record(EventKind.ITEM_FAILED, user=u, item=item, reason=reason)

    def requeue_dead(self, user: str, items: list[str]) -> None:
        """A replica died with the chunk: retry each item and tell who lost what."""
        workers = self.queue.workers_of(user, items)
        by_worker: dict[str, list[str]] = defaultdict(list)
        for item in items:
            by_worker[workers.get(item, "unknown")].append(item)
        states = self.queue.fail(
            [(user, i, "worker died") for i in items], self.settings.max_retries
        )
        requeued = {i for i, s in zip(items, states, strict=True) if s == ItemState.QUEUED}
        self.metrics.items_failed("worker_dead", len(items))
        for worker, its in by_worker.items():
            self.events.record(
                EventKind.WORKER_DEAD,
                worker=worker,
                user=user,
                requeued=[i for i in its if i in requeued],
            )
