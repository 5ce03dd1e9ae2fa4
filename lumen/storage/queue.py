"""Reliable per-user queues: enqueue, claim, fail, requeue-expired, delete, reset, status."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from lumen.keys import Keys
from lumen.storage import scripts
from lumen.storage.text import text, text_map


@dataclass(frozen=True)
class NewItem:
    """An item to enqueue: its path, content hash, metadata and (PDF pages) text."""

    item: str
    sha256: str
    meta: dict[str, Any] = field(default_factory=dict)
    text: str = ""


@dataclass(frozen=True)
class EnqueueResult:
    queued: list[str]
    duplicates: dict[str, str]  # new item -> the item already holding that content


@dataclass(frozen=True)
class Retried:
    user: str
    item: str
    state: str  # "queued", "error" or "gone"


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

    def as_dict(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "queued_items": self.queued_items,
            "processing": self.processing,
            "processing_workers": self.processing_workers,
            "done": self.done,
            "errors": self.errors,
            "retries": self.retries,
        }


class QueueStore:
    """The queue state machine; every transition is one Lua script."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self._r = client
        self._k = keys
        self._enqueue = client.register_script(scripts.ENQUEUE)
        self._claim = client.register_script(scripts.CLAIM)
        self._assign = client.register_script(scripts.ASSIGN)
        self._fail = client.register_script(scripts.FAIL)
        self._expire = client.register_script(scripts.REQUEUE_EXPIRED)
        self._delete = client.register_script(scripts.DELETE_QUEUED)
        self._reset = client.register_script(scripts.RESET)

    def enqueue(self, user: str, items: list[NewItem]) -> EnqueueResult:
        k = self._k
        args: list[str] = [user]
        for it in items:
            args += [it.item, it.sha256, json.dumps({"sha256": it.sha256, **it.meta}), it.text]
        keys = [k.queue(user), k.meta(user), k.sha(user), k.active, k.pdftext(user)]
        queued, dups = self._enqueue(keys=keys, args=args)
        pairs = [text(x) for x in dups]
        return EnqueueResult(
            [text(x) for x in queued], dict(zip(pairs[::2], pairs[1::2], strict=True))
        )

    def active_users(self) -> list[str]:
        return sorted(text(u) for u in self._r.smembers(self._k.active))

    def claim(self, user: str, n: int, worker: str, timeout_s: float) -> list[str]:
        k = self._k
        deadline = time.time() + timeout_s
        keys = [k.queue(user), k.processing(user), k.deadline, k.active]
        return [text(x) for x in self._claim(keys=keys, args=[user, n, worker, deadline])]

    def assign(self, user: str, items: list[str], worker: str) -> int:
        """Record the worker now holding these items (only those still processing)."""
        return int(self._assign(keys=[self._k.processing(user)], args=[worker, *items]))

    def workers_of(self, user: str, items: list[str]) -> dict[str, str]:
        """The worker holding each item still in processing."""
        if not items:
            return {}
        raw = self._r.hmget(self._k.processing(user), items)
        return {i: text(w) for i, w in zip(items, raw, strict=True) if w is not None}

    def fail(self, failures: list[tuple[str, str, str]], max_retries: int) -> list[str]:
        """Requeue or error each (user, item, reason) still in processing; returns states."""
        if not failures:
            return []
        args: list[Any] = [self._k.ns, max_retries]
        for user, item, reason in failures:
            args += [user, item, reason]
        return [text(x) for x in self._fail(args=args)]

    def requeue_expired(self, max_retries: int, limit: int = 500) -> list[Retried]:
        reason = "task timed out"
        out = self._expire(args=[self._k.ns, max_retries, time.time(), limit, reason])
        return [Retried(text(u), text(i), text(s)) for u, i, s in out]

    def delete_queued(self, user: str, item: str) -> int:
        k = self._k
        keys = [
            k.queue(user), k.meta(user), k.sha(user), k.retries(user),
            k.errors(user), k.pdftext(user), k.caption(user),
        ]  # fmt: skip
        return int(self._delete(keys=keys, args=[item]))

    def reset(self, user: str) -> None:
        k = self._k
        self._reset(
            keys=[k.processing(user), k.deadline, k.active, *k.user_keys(user)], args=[user]
        )

    def state_of(self, user: str, item: str) -> str | None:
        """'processing', 'done', 'error', 'queued' or None (unknown to this user)."""
        k = self._k
        pipe = self._r.pipeline()
        pipe.hexists(k.processing(user), item)
        pipe.zscore(k.done(user), item)
        pipe.hexists(k.errors(user), item)
        pipe.hexists(k.meta(user), item)
        processing, done, error, known = pipe.execute()
        if processing:
            return "processing"
        if done is not None:
            return "done"
        if error:
            return "error"
        return "queued" if known else None

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
