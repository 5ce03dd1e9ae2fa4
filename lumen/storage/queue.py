"""Reliable per-user queues: enqueue, claim, fail, requeue-expired, retry, delete, reset, status.

Every call is idempotent under redis-py's resend of a call whose reply was lost: the scripts
remember their answer under a reply key unique to the call (see `lumen.storage.scripts`).
"""

from __future__ import annotations

import json
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from lumen.keys import Keys
from lumen.states import ItemState
from lumen.storage import scripts
from lumen.storage.text import text, text_map


@dataclass(frozen=True)
class NewItem:
    """An item to enqueue: its path, content hash, metadata, (PDF pages) text, file size."""

    item: str
    sha256: str
    meta: dict[str, Any] = field(default_factory=dict)
    text: str = ""
    size: int = 0  # bytes of the stored file, counted in the user's usage


@dataclass(frozen=True)
class Usage:
    """What a user's items hold on disk: bytes of their files and how many items."""

    bytes: int
    items: int


@dataclass(frozen=True)
class EnqueueResult:
    """`queued` may name an earlier errored item with the same content, requeued."""

    queued: list[str]
    duplicates: dict[str, str]  # new item -> the item already holding that content


@dataclass(frozen=True)
class Retried:
    user: str
    item: str
    state: ItemState  # QUEUED, ERROR or GONE


REPLY_TTL_S = 300  # how long a script's answer is kept for a resent call


@dataclass
class QueueStatus:
    """The spec's `/status` payload."""

    queue: int
    queued_items: list[str]
    processing: list[str]
    processing_workers: dict[str, str]
    done: list[str]
    errors: dict[str, str]
    retries: dict[str, str]


class QueueStore:
    """The queue state machine; every transition is one Lua script."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self._r = client
        self._k = keys
        self._enqueue = client.register_script(scripts.ENQUEUE)
        self._claim = client.register_script(scripts.CLAIM)
        self._assign = client.register_script(scripts.ASSIGN)
        self._retry = client.register_script(scripts.RETRY)
        self._retry_failed = client.register_script(scripts.RETRY_FAILED)
        self._delete = client.register_script(scripts.DELETE)
        self._reset = client.register_script(scripts.RESET)

    def _reply(self, user: str) -> str:
        """A reply key for one call (the same on redis-py's resend of it)."""
        return self._k.reply(user, uuid.uuid4().hex)

    def enqueue(self, user: str, items: list[NewItem]) -> EnqueueResult:
        """Queue new content; the same content as an earlier item is a duplicate of it.

        Content matching an errored item requeues that item (fresh retry budget): its name is
        in `queued` and the new name in `duplicates`. Usage counts newly stored items only.
        """
        k = self._k
        args: list[Any] = [REPLY_TTL_S, user]
        for it in items:
            meta = json.dumps({**it.meta, "sha256": it.sha256, "size": it.size})
            args += [it.item, it.sha256, meta, it.text, it.size]
        keys = [
            self._reply(user), k.queue(user), k.meta(user), k.sha(user), k.active,
            k.pdftext(user), k.usage(user), k.errors(user), k.retries(user),
        ]  # fmt: skip
        queued, dups = self._enqueue(keys=keys, args=args)
        pairs = [text(x) for x in dups]
        return EnqueueResult(
            [text(x) for x in queued], dict(zip(pairs[::2], pairs[1::2], strict=True))
        )

    def usage(self, user: str) -> Usage:
        raw_bytes, raw_items = self._r.hmget(self._k.usage(user), ["bytes", "items"])
        return Usage(int(raw_bytes or 0), int(raw_items or 0))

    def active_users(self) -> list[str]:
        return sorted(text(u) for u in self._r.smembers(self._k.active))

    def claim(self, user: str, n: int, worker: str, timeout_s: float) -> list[str]:
        k = self._k
        deadline = time.time() + timeout_s
        keys = [self._reply(user), k.queue(user), k.processing(user), k.deadline, k.active]
        args: list[Any] = [REPLY_TTL_S, user, n, worker, deadline]
        return [text(x) for x in self._claim(keys=keys, args=args)]

    def assign(self, user: str, items: list[str], worker: str) -> int:
        """Record the worker now holding these items (only those still processing)."""
        return int(self._assign(keys=[self._k.processing(user)], args=[worker, *items]))

    def workers_of(self, user: str, items: list[str]) -> dict[str, str]:
        """The worker holding each item still in processing."""
        if not items:
            return {}
        raw = self._r.hmget(self._k.processing(user), items)
        return {i: text(w) for i, w in zip(items, raw, strict=True) if w is not None}

    def _retry_user(
        self, user: str, pairs: list[tuple[str, str]], max_retries: int, now: float | None
    ) -> list[ItemState]:
        """One atomic script per user: each (item, reason) requeued, errored, gone or live."""
        k = self._k
        keys = [
            self._reply(user), k.processing(user), k.deadline, k.retries(user),
            k.errors(user), k.queue(user), k.active,
        ]  # fmt: skip
        args: list[Any] = [REPLY_TTL_S, user, max_retries, "" if now is None else repr(now)]
        for item, reason in pairs:
            args += [item, reason]
        return [ItemState(text(x)) for x in self._retry(keys=keys, args=args)]

    def fail(self, failures: list[tuple[str, str, str]], max_retries: int) -> list[ItemState]:
        """Requeue or error each (user, item, reason) still in processing; returns states.

        States are QUEUED, ERROR or GONE (no longer processing), in the input's order.
        """
        by_user: dict[str, list[int]] = defaultdict(list)
        for pos, (user, _, _) in enumerate(failures):
            by_user[user].append(pos)
        states = [ItemState.GONE] * len(failures)
        for user, positions in by_user.items():
            pairs = [(failures[p][1], failures[p][2]) for p in positions]
            results = self._retry_user(user, pairs, max_retries, None)
            for p, state in zip(positions, results, strict=True):
                states[p] = state
        return states

    def requeue_expired(
        self,
        max_retries: int,
        limit: int = 500,
        now: float | None = None,
        owns: Callable[[str], bool] | None = None,
    ) -> list[Retried]:
        """Requeue (or error) items whose deadline passed by `now` (default: the clock).

        Reads the due deadlines, then retries each user's items in one script that re-checks
        that each is still processing and still due, so nothing is requeued twice. `owns`
        keeps a dispatcher shard to its own users.
        """
        now = time.time() if now is None else now
        due = self._r.zrangebyscore(self._k.deadline, "-inf", now, start=0, num=limit)
        by_user: dict[str, list[str]] = defaultdict(list)
        for member in due:
            user, _, item = text(member).partition("\0")
            if owns is None or owns(user):
                by_user[user].append(item)
        out: list[Retried] = []
        reason = "task timed out"
        for user, items in by_user.items():
            states = self._retry_user(user, [(i, reason) for i in items], max_retries, now)
            out += [
                Retried(user, item, state)
                for item, state in zip(items, states, strict=True)
                if state != ItemState.LIVE
            ]
        return out

    def next_deadline(self) -> float | None:
        """The earliest deadline of any item in processing (epoch s), or None."""
        first = self._r.zrange(self._k.deadline, 0, 0, withscores=True)
        return float(first[0][1]) if first else None

    def retry_failed(self, user: str, item: str) -> bool:
        """Move an errored item back to the queue with a fresh retry budget."""
        return bool(self._run_retry_failed(user, [item]))

    def retry_all_failed(self, user: str) -> list[str]:
        """Move every errored item of the user back to the queue; returns them."""
        return self._run_retry_failed(user, [])

    def _run_retry_failed(self, user: str, items: list[str]) -> list[str]:
        k = self._k
        keys = [self._reply(user), k.errors(user), k.retries(user), k.queue(user), k.active]
        return [text(x) for x in self._retry_failed(keys=keys, args=[REPLY_TTL_S, user, *items])]

    def _run_delete(self, user: str, item: str, state: ItemState) -> int:
        k = self._k
        keys = [
            self._reply(user), k.queue(user), k.meta(user), k.sha(user), k.retries(user),
            k.errors(user), k.pdftext(user), k.caption(user), k.usage(user),
        ]  # fmt: skip
        return int(self._delete(keys=keys, args=[REPLY_TTL_S, item, state]))

    def delete_queued(self, user: str, item: str) -> int:
        """Remove a waiting item (never embedded) and its records; returns how many went."""
        return self._run_delete(user, item, ItemState.QUEUED)

    def delete_failed(self, user: str, item: str) -> int:
        """Remove an errored item and its records (its file is the caller's); 0 or 1."""
        return self._run_delete(user, item, ItemState.ERROR)

    def reset(self, user: str) -> None:
        k = self._k
        self._reset(
            keys=[k.processing(user), k.deadline, k.active, *k.user_keys(user)], args=[user]
        )

    def state_of(self, user: str, item: str) -> ItemState | None:
        """PROCESSING, DONE, ERROR, QUEUED or None (unknown to this user)."""
        k = self._k
        pipe = self._r.pipeline()
        pipe.hexists(k.processing(user), item)
        pipe.zscore(k.done(user), item)
        pipe.hexists(k.errors(user), item)
        pipe.hexists(k.meta(user), item)
        processing, done, error, known = pipe.execute()
        if processing:
            return ItemState.PROCESSING
        if done is not None:
            return ItemState.DONE
        if error:
            return ItemState.ERROR
        return ItemState.QUEUED if known else None

    def status(self, user: str, max_items: int) -> QueueStatus:
        k = self._k
        pipe = self._r.pipeline()
        pipe.llen(k.queue(user))
        pipe.lrange(k.queue(user), 0, max_items - 1)
        pipe.hgetall(k.processing(user))
        pipe.zrange(k.done(user), -max_items, -1)
        pipe.hgetall(k.errors(user))
        pipe.hgetall(k.retries(user))
        qlen, queued, processing, done, errors, retries = pipe.execute()
        workers = text_map(processing)
        return QueueStatus(
            queue=int(qlen),
            queued_items=[text(x) for x in queued],
            processing=sorted(workers),
            processing_workers=workers,
            done=[text(x) for x in done],
            errors=text_map(errors),
            retries=text_map(retries),
        )

    def done(self, user: str) -> list[str]:
        return [text(x) for x in self._r.zrange(self._k.done(user), 0, -1)]

    def meta(self, user: str, items: list[str]) -> list[dict[str, Any] | None]:
        if not items:
            return []
        raw = self._r.hmget(self._k.meta(user), items)
        return [json.loads(r) if r is not None else None for r in raw]

    def pdf_items(self, user: str) -> list[str]:
        """PDF page items (the keys of the page-text hash, without reading the texts)."""
        return [text(k) for k in self._r.hkeys(self._k.pdftext(user))]

    def pdf_texts(self, user: str) -> dict[str, str]:
        return text_map(self._r.hgetall(self._k.pdftext(user)))

    def pdf_text(self, user: str, item: str) -> str | None:
        raw = self._r.hget(self._k.pdftext(user), item)
        return text(raw) if raw is not None else None

    def depth(self) -> dict[str, int]:
        """Queued and processing items across all users (for metrics)."""
        users = self.active_users()
        pipe = self._r.pipeline()
        for u in users:
            pipe.llen(self._k.queue(u))
        pipe.zcard(self._k.deadline)
        *queued, processing = pipe.execute()
        return {"queued": int(sum(queued)), "processing": int(processing)}
