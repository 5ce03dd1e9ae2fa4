"""Vectors, their ids and captions in Redis: committed atomically with the item's `done`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import redis

from lumen.errors import ModelMismatch
from lumen.keys import Keys
from lumen.storage import scripts
from lumen.storage.text import text


@dataclass(frozen=True)
class IndexInfo:
    model: str
    dim: int


class VectorStore:
    """`commit` turns processing items into done items with a vector, exactly once per item.

    Idempotent: a repeated commit changes nothing and gives the same answer.
    """

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self._r = client
        self._k = keys
        self._commit = client.register_script(scripts.COMMIT_VECTORS)
        self._describe = client.register_script(scripts.DESCRIBE)

    def commit(
        self,
        user: str,
        model_id: str,
        dim: int,
        rows: list[tuple[str, bytes, str]],
    ) -> dict[str, int]:
        """Store (item, vector bytes, caption) rows still in processing; returns item -> id.

        The answer names every row's item that is done with exactly that row's vector bytes,
        committed by this call or by an earlier one (a retry after a lost reply), so the
        caller's index mirror learns of every item. Rows no longer processing (reset,
        deleted, requeued and done by another worker with other bytes) are left out.
        """
        k = self._k
        keys = [
            k.processing(user), k.deadline, k.done(user), k.errors(user), k.vec(user),
            k.vid(user), k.vitem(user), k.vseq(user), k.vinfo(user), k.caption(user),
        ]  # fmt: skip
        args: list[Any] = [user, time.time(), model_id, dim]
        for item, blob, caption in rows:
            args += [item, blob, caption]
        status, committed = self._commit(keys=keys, args=args)
        status = text(status)
        if status != "ok":
            stored = status.split(":", 1)[1]
            raise ModelMismatch(
                f"this space was indexed with model {stored}; the service now runs "
                f"{model_id}/{dim}. Reset the space (POST /reset) and upload again to re-embed."
            )
        pairs = [text(x) for x in committed]
        return {item: int(vid) for item, vid in zip(pairs[::2], pairs[1::2], strict=True)}

    def info(self, user: str) -> IndexInfo | None:
        model, dim = self._r.hmget(self._k.vinfo(user), ["model", "dim"])
        if model is None or dim is None:
            return None
        return IndexInfo(text(model), int(dim))

    def count(self, user: str) -> int:
        return int(self._r.hlen(self._k.vec(user)))

    def scan(self, user: str, chunk: int = 10_000) -> Iterator[tuple[list[int], list[bytes]]]:
        """All (ids, vector bytes) of a user in chunks, for rebuilding an index."""
        cursor = 0
        while True:
            cursor, page = self._r.hscan(self._k.vec(user), cursor, count=chunk)
            if page:
                fields: dict[Any, Any] = dict(page)  # type: ignore[arg-type]
                yield [int(i) for i in fields], list(fields.values())
            if cursor == 0:
                return

    def items_for(self, user: str, ids: list[int]) -> list[str | None]:
        if not ids:
            return []
        raw = self._r.hmget(self._k.vitem(user), [str(i) for i in ids])
        return [text(r) if r is not None else None for r in raw]

    def describe(self, user: str, ids: list[int]) -> list[tuple[str | None, str]]:
        """(item, caption) for each vector id, in one round trip."""
        if not ids:
            return []
        vitem, caption = self._k.vitem(user), self._k.caption(user)
        script = self._describe
        raw = script(keys=[vitem, caption], args=[str(i) for i in ids])
        return [(text(it) if it else None, text(c) if c else "") for it, c in raw]

    def ids_for(self, user: str, items: list[str]) -> list[int | None]:
        if not items:
            return []
        raw = self._r.hmget(self._k.vid(user), items)
        return [int(r) if r is not None else None for r in raw]

    def write_raw(self, user: str, model_id: str, dim: int, rows: list[tuple[str, bytes]]) -> None:
        """Bulk-load vectors straight into the store (benchmarks and imports, not the queue)."""
        k = self._k
        start = int(self._r.incrby(k.vseq(user), len(rows))) - len(rows)
        pipe = self._r.pipeline(transaction=False)
        pipe.hset(k.vinfo(user), mapping={"model": model_id, "dim": dim})
        now = time.time()
        for offset, (item, blob) in enumerate(rows, start=1):
            vid = start + offset
            pipe.hset(k.vec(user), str(vid), blob)
            pipe.hset(k.vid(user), item, vid)
            pipe.hset(k.vitem(user), str(vid), item)
            pipe.zadd(k.done(user), {item: now})
        pipe.execute()

    def last_id(self, user: str) -> int:
        """The last vector id issued to the user (0 before any): part of a snapshot's version."""
        return int(self._r.get(self._k.vseq(user)) or 0)
