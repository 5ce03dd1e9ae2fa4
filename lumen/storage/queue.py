"""Reliable per-user queues: enqueue, claim, fail, requeue-expired, retry, delete, reset, status.

Every call is idempotent under redis-py's resend of a call whose reply was lost: the scripts
remember their answer under a reply key unique to the call (see `lumen.storage.scripts`).

Each script touches one user's keys only (one Redis Cluster slot). Two cross-user indexes per
dispatcher shard tell the dispatcher where to look, and are kept here, outside the scripts:

- `active:<s>`, users that may have queued items. Announced before a script can push (a
  crash between them leaves a harmless extra entry) and again after it did; a claim that
  leaves the queue empty removes the user, then re-reads the queue and re-adds the user if
  an item arrived meanwhile. Whichever order a push and a removal interleave in, the user
  stays in the set while items wait.
- `deadlines:<s>`, user -> a time at or before the user's earliest deadline. A claim
  announces its deadline (`ZADD LT`) before and after its script; a sweep removes the user,
  then re-reads the user's `deadline:{u}` and re-adds its earliest. An entry may be early
  (the sweep then finds nothing due and moves it on), never late.

`adopt` rebuilds both from the keyspace (a SCAN of every node): on a dispatcher's start, after
the dispatcher count changed, and to move the single-Redis layout's global keys over.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from lumen.keys import NEXT, OLD, Keys, shard_of
from lumen.states import ItemState
from lumen.storage import scripts
from lumen.storage.client import Client, run_scripts
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

    def __init__(
        self, client: Client, keys: Keys, shards: int = 1, scope: int | None = None
    ) -> None:
        """`shards`: dispatcher shards; `scope`: the one shard this view sweeps and claims
        for (`for_shard`), or None for every shard."""
        self._r = client
        self._k = keys
        self.shards = max(1, shards)
        self.scope = scope
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
        args: list[Any] = [REPLY_TTL_S]
        for it in items:
            meta = json.dumps({**it.meta, "sha256": it.sha256, "size": it.size})
            args += [it.item, it.sha256, meta, it.text, it.size]
        keys = [
            self._reply(user), k.queue(user), k.meta(user), k.sha(user),
            k.pdftext(user), k.usage(user), k.errors(user), k.retries(user),
        ]  # fmt: skip
        self._announce(user)
        queued, dups = self._enqueue(keys=keys, args=args)
        if queued:
            self._announce(user)
        pairs = [text(x) for x in dups]
        return EnqueueResult(
            [text(x) for x in queued], dict(zip(pairs[::2], pairs[1::2], strict=True))
        )

    def usage(self, user: str) -> Usage:
        raw_bytes, raw_items = self._r.hmget(self._k.usage(user), ["bytes", "items"])
        return Usage(int(raw_bytes or 0), int(raw_items or 0))

    # -- the per-shard indexes ---------------------------------------------------------

    def shard(self, user: str) -> int:
        return shard_of(user, self.shards)

    def for_shard(self, shard: int) -> QueueStore:
        """A view that claims and sweeps only the users of dispatcher shard `shard`."""
        return QueueStore(self._r, self._k, self.shards, shard)

    def _scoped(self) -> list[int]:
        return list(range(self.shards)) if self.scope is None else [self.scope]

    def _announce(self, user: str) -> None:
        """`user` may have queued items (before and after any script that can push)."""
        self._r.sadd(self._k.active(self.shard(user)), user)

    def _settle_active(self, user: str) -> None:
        """Drop `user` from its active set unless items are queued (remove, re-check, re-add)."""
        key = self._k.active(self.shard(user))
        self._r.srem(key, user)
        if self._r.llen(self._k.queue(user)):
            self._r.sadd(key, user)

    def _announce_deadline(self, user: str, when: float) -> None:
        """`user` has (or is about to have) an item due at `when`: keep the earliest."""
        self._r.zadd(self._k.deadlines(self.shard(user)), {user: when}, lt=True)

    def _settle_deadline(self, user: str) -> None:
        """Point the shard's entry at the user's earliest deadline, or drop it (remove,
        re-check, re-add)."""
        key = self._k.deadlines(self.shard(user))
        self._r.zrem(key, user)
        first = self._r.zrange(self._k.deadline(user), 0, 0, withscores=True)
        if first:
            self._r.zadd(key, {user: float(first[0][1])}, lt=True)

    def active_users(self) -> list[str]:
        """Users (of this view's shards) that may have queued items."""
        return self._active_in(self._scoped())

    def _active_in(self, shards: list[int]) -> list[str]:
        users: set[str] = set()
        for shard in shards:
            users.update(text(u) for u in self._r.smembers(self._k.active(shard)))
        return sorted(users)

    def adopt(self, owns: Callable[[str], bool] | None = None, count: int = 1000) -> int:
        """Rebuild the shard indexes of `owns`'s users from the keyspace; returns the users
        announced. Also moves the single-Redis layout's global `deadline` and `active` over.

        SCANs every node of a cluster (redis-py's cluster client does), so it costs one pass
        over the keyspace: run it when a dispatcher starts, not per round.
        """
        k = self._k
        mine = owns or (lambda _u: True)
        seen: set[str] = set()
        legacy = k.legacy_deadline
        for member, score in self._r.zscan_iter(legacy, count=count):
            user, _, item = text(member).partition("\0")
            if mine(user):
                self._announce_deadline(user, float(score))
                self._r.zadd(k.deadline(user), {item: float(score)}, nx=True)
                self._r.zrem(legacy, member)
        for member in self._r.sscan_iter(k.legacy_active, count=count):
            user = text(member)
            if mine(user):
                self._announce(user)
                self._r.srem(k.legacy_active, member)
        for user in self._users_with(k.queue, count):
            if mine(user):
                self._announce(user)
                seen.add(user)
        for user in self._users_with(k.deadline, count):
            if mine(user):
                self._settle_deadline(user)
                seen.add(user)
        return len(seen)

    def _users_with(self, template: Callable[[str], str], count: int) -> Iterator[str]:
        return users_with(self._r, template, count)

    def claim(self, user: str, n: int, worker: str, timeout_s: float) -> list[str]:
        k = self._k
        deadline = time.time() + timeout_s
        self._announce_deadline(user, deadline)
        keys = [self._reply(user), k.queue(user), k.processing(user), k.deadline(user)]
        args: list[Any] = [REPLY_TTL_S, n, worker, deadline]
        claimed, left = self._claim(keys=keys, args=args)
        if claimed:
            self._announce_deadline(user, deadline)
        else:
            self._settle_deadline(user)
        if not int(left):
            self._settle_active(user)
        return [text(x) for x in claimed]

    def claim_many(
        self, wants: list[tuple[str, int]], worker: str, timeout_s: float
    ) -> list[list[str]]:
        """`claim` for several users at once: up to n items of each (user, n), in order.

        The same steps as `claim`, each taken for every user together, so a claim pass costs
        a few round trips whatever the number of users: the deadline announced (one ZADD per
        shard), every user's CLAIM script (pipelined: per node on a cluster), announced again
        or dropped, then the shard entries of users left idle re-checked and re-added.
        """
        k = self._k
        if any(n <= 0 for _, n in wants):  # nothing to claim for those: answered empty
            asked = [(u, n) for u, n in wants if n > 0]
            got = iter(self.claim_many(asked, worker, timeout_s))
            return [next(got) if n > 0 else [] for _, n in wants]
        if not wants:
            return []
        deadline = time.time() + timeout_s
        users = [user for user, _ in wants]
        self._announce_deadlines(users, deadline)
        calls = [
            (
                self._claim,
                [self._reply(user), k.queue(user), k.processing(user), k.deadline(user)],
                [REPLY_TTL_S, n, worker, deadline],
            )
            for user, n in wants
        ]
        answers = run_scripts(self._r, calls)
        claimed = [[text(x) for x in items] for items, _ in answers]
        busy = [user for user, items in zip(users, claimed, strict=True) if items]
        idle = [user for user, items in zip(users, claimed, strict=True) if not items]
        drained = [user for user, (_, left) in zip(users, answers, strict=True) if not int(left)]
        # remove (the idle users' deadline entries, the drained users' active entries) and
        # announce the busy users' deadlines again, then re-check, then re-add what is due
        pipe = self._r.pipeline(transaction=False)
        for user in idle:
            pipe.zrem(k.deadlines(self.shard(user)), user)
        for user in drained:
            pipe.srem(k.active(self.shard(user)), user)
        for shard, members in self._by_shard(busy).items():
            pipe.zadd(k.deadlines(shard), dict.fromkeys(members, deadline), lt=True)
        pipe.execute()
        pipe = self._r.pipeline(transaction=False)
        for user in idle:
            pipe.zrange(k.deadline(user), 0, 0, withscores=True)
        for user in drained:
            pipe.llen(k.queue(user))
        checks = pipe.execute()  # an empty pipeline sends nothing
        pipe = self._r.pipeline(transaction=False)
        for user, first in zip(idle, checks[: len(idle)], strict=True):
            if first:
                pipe.zadd(k.deadlines(self.shard(user)), {user: float(first[0][1])}, lt=True)
        for user, queued in zip(drained, checks[len(idle) :], strict=True):
            if queued:
                pipe.sadd(k.active(self.shard(user)), user)
        pipe.execute()
        return claimed

    def _by_shard(self, users: list[str]) -> dict[int, list[str]]:
        out: dict[int, list[str]] = defaultdict(list)
        for user in users:
            out[self.shard(user)].append(user)
        return out

    def _announce_deadlines(self, users: list[str], when: float) -> None:
        """`_announce_deadline` for several users: one ZADD per dispatcher shard."""
        pipe = self._r.pipeline(transaction=False)
        for shard, members in self._by_shard(users).items():
            pipe.zadd(self._k.deadlines(shard), dict.fromkeys(members, when), lt=True)
        pipe.execute()

    def assign(self, user: str, items: list[str], worker: str) -> int:
        """Record the worker now holding these items (only those still processing)."""
        return int(self._assign(keys=[self._k.processing(user)], args=[worker, *items]))

    def assign_many(self, by_user: dict[str, list[str]], worker: str) -> dict[str, int]:
        """`assign` for several users' items (a batch of a mixed chunk) in one round trip."""
        users = [user for user, items in by_user.items() if items]
        calls = [
            (self._assign, [self._k.processing(user)], [worker, *by_user[user]]) for user in users
        ]
        return {user: int(n) for user, n in zip(users, run_scripts(self._r, calls), strict=True)}

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
            self._reply(user), k.processing(user), k.deadline(user), k.retries(user),
            k.errors(user), k.queue(user),
        ]  # fmt: skip
        args: list[Any] = [REPLY_TTL_S, max_retries, "" if now is None else repr(now)]
        for item, reason in pairs:
            args += [item, reason]
        may_push = max_retries >= 0
        if may_push:
            self._announce(user)
        states = [ItemState(text(x)) for x in self._retry(keys=keys, args=args)]
        if ItemState.QUEUED in states:
            self._announce(user)
        return states

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
        k = self._k
        out: list[Retried] = []
        reason = "task timed out"
        for shard in self._scoped():
            users = self._r.zrangebyscore(k.deadlines(shard), "-inf", now, start=0, num=limit)
            for user in (text(u) for u in users):
                if owns is not None and not owns(user):
                    continue
                due = self._r.zrangebyscore(k.deadline(user), "-inf", now, start=0, num=limit)
                items = [text(i) for i in due]
                if items:
                    states = self._retry_user(user, [(i, reason) for i in items], max_retries, now)
                    out += [
                        Retried(user, item, state)
                        for item, state in zip(items, states, strict=True)
                        if state != ItemState.LIVE
                    ]
                self._settle_deadline(user)
        return out

    def next_deadline(self) -> float | None:
        """The earliest deadline of any item in processing (epoch s), or None; per shard
        it may be early (see the module's docstring), never late."""
        firsts = [
            float(first[0][1])
            for shard in self._scoped()
            if (first := self._r.zrange(self._k.deadlines(shard), 0, 0, withscores=True))
        ]
        return min(firsts, default=None)

    def retry_failed(self, user: str, item: str) -> bool:
        """Move an errored item back to the queue with a fresh retry budget."""
        return bool(self._run_retry_failed(user, [item]))

    def retry_all_failed(self, user: str) -> list[str]:
        """Move every errored item of the user back to the queue; returns them."""
        return self._run_retry_failed(user, [])

    def _run_retry_failed(self, user: str, items: list[str]) -> list[str]:
        k = self._k
        keys = [self._reply(user), k.errors(user), k.retries(user), k.queue(user)]
        self._announce(user)
        moved = [text(x) for x in self._retry_failed(keys=keys, args=[REPLY_TTL_S, *items])]
        if moved:
            self._announce(user)
        return moved

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
        """Clear every per-user key (vector blocks included), then the shard indexes."""
        k = self._k
        while True:  # again when a commit issued ids beyond the blocks declared
            last = int(self._r.get(k.vseq(user)) or 0)
            others = [
                block
                for space in (NEXT, OLD)
                for block in k.vblocks(user, int(self._r.get(k.vseq(user, space)) or 0), space)
            ]  # a re-embedding's space and a kept old one
            keys = [k.vseq(user), *k.user_keys(user), *k.vblocks(user, last), *others]
            if self._reset(keys=keys, args=[last]):
                break
        self._settle_active(user)
        self._settle_deadline(user)

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
        k = self._k
        users = self._active_in(list(range(self.shards)))
        busy = sorted(
            {text(u) for s in range(self.shards) for u in self._r.zrange(k.deadlines(s), 0, -1)}
        )
        # not a transaction: on a cluster, redis-py sends each node its commands
        pipe = self._r.pipeline(transaction=False)
        for u in users:
            pipe.llen(k.queue(u))
        for u in busy:
            pipe.zcard(k.deadline(u))
        counts = pipe.execute() if users or busy else []
        queued, processing = counts[: len(users)], counts[len(users) :]
        return {"queued": int(sum(queued)), "processing": int(sum(processing))}


def users_with(client: Client, template: Callable[[str], str], count: int) -> Iterator[str]:
    """Users having a key of this per-user template (SCAN, every node of a cluster)."""
    head, _, tail = template("\0").partition("{\0}")
    pattern = f"{_glob_escape(head)}{{*}}{_glob_escape(tail)}"
    for key in client.scan_iter(match=pattern, count=count):
        name = text(key)
        if name.startswith(head + "{") and name.endswith("}" + tail):
            yield name[len(head) + 1 : len(name) - len(tail) - 1]


def _glob_escape(value: str) -> str:
    """`value` matched literally in a SCAN pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in value)
