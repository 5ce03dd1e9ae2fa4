"""Vectors, their ids, captions and photos' OCR words in Redis: committed atomically with the
item's `done`.

Vectors are packed in fixed-size blocks, `VECTOR_BLOCK_IDS` ids per Redis string (see
`lumen.keys`), so Redis holds about their raw bytes (a hash field per vector cost 1.27x).
Vectors of the older layout (a `vec:{u}` hash) still load: `scan` moves them into blocks
first, a batch per script call, and a commit rewriting one of them moves it too.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from lumen.errors import ModelMismatch
from lumen.keys import VECTOR_BLOCK_IDS, Keys
from lumen.storage import scripts
from lumen.storage.client import Client, ScriptCall, run_scripts
from lumen.storage.text import text
from lumen.vectors import CommitRow

log = logging.getLogger(__name__)

MIGRATE_BATCH = 512  # legacy vectors moved into blocks per script call


def blocks_of(ids: Iterable[int], per: int = VECTOR_BLOCK_IDS) -> list[int]:
    """The block numbers holding these vector ids, ascending."""
    return sorted({i // per for i in ids})


def slot_offset(vid: int, dim: int, per: int = VECTOR_BLOCK_IDS) -> int:
    """Where vector `vid` starts in its block (bytes)."""
    return (vid % per) * dim * 4


def pack_rows(
    ids: list[int], blobs: list[bytes], dim: int, per: int = VECTOR_BLOCK_IDS
) -> list[tuple[int, int, bytes]]:
    """(block, offset, bytes) writes for vectors with consecutive ids, one per run of
    adjacent slots in a block, so a bulk load is a few large SETRANGEs."""
    row = dim * 4
    out: list[tuple[int, int, bytes]] = []
    run: list[bytes] = []
    start = prev = -2
    for vid, blob in zip(ids, blobs, strict=True):
        if len(blob) != row:
            raise ValueError(f"vector {vid} has {len(blob)} bytes, not {row} (dim {dim})")
        if vid == prev + 1 and vid // per == prev // per:
            run.append(blob)
        else:
            if run:
                out.append((start // per, slot_offset(start, dim, per), b"".join(run)))
            run, start = [blob], vid
        prev = vid
    if run:
        out.append((start // per, slot_offset(start, dim, per), b"".join(run)))
    return out


def ocr_record(words: str = "", note: str = "") -> str:
    """What `ocr:{u}` holds for a photo: JSON of its words and OCR's note ("" for neither)."""
    if not words and not note:
        return ""
    return json.dumps({"text": words, "note": note}, ensure_ascii=False)


def ocr_text(raw: Any) -> str:
    """The words of an `ocr:{u}` record ("" for none or a missing record)."""
    if raw is None:
        return ""
    return str(json.loads(text(raw)).get("text") or "")


@dataclass(frozen=True)
class IndexInfo:
    model: str
    dim: int


def _info(model: Any, dim: Any) -> IndexInfo | None:
    return None if model is None or dim is None else IndexInfo(text(model), int(dim))


# One user's commit: (user, model id, dim, rows).
CommitRequest = tuple[str, str, int, list[CommitRow]]


class VectorStore:
    """`commit` turns processing items into done items with a vector, exactly once per item.

    Idempotent: a repeated commit changes nothing and gives the same answer.
    """

    def __init__(self, client: Client, keys: Keys, per_block: int = VECTOR_BLOCK_IDS) -> None:
        self._r = client
        self._k = keys
        self.per = per_block
        self._commit = client.register_script(scripts.COMMIT_VECTORS)
        self._migrate = client.register_script(scripts.MIGRATE_VECTORS)
        self._describe = client.register_script(scripts.DESCRIBE)
        self._compact = client.register_script(scripts.COMPACT_BLOCK)

    def commit(
        self,
        user: str,
        model_id: str,
        dim: int,
        rows: list[CommitRow],
    ) -> dict[str, int]:
        """Store (item, vector bytes, caption[, OCR words, OCR note]) rows still in
        processing; returns item -> id.

        The answer names every row's item that is done with exactly that row's vector bytes,
        committed by this call or by an earlier one (a retry after a lost reply), so the
        caller's index mirror learns of every item. Rows no longer processing (reset,
        deleted, requeued and done by another worker with other bytes) are left out.
        """
        self._check_rows(rows, dim)
        extra = 0
        while True:  # again, with more blocks, when ids moved on since they were read
            seq, vids = self._ids_known(user, rows)
            call = self._commit_call(user, model_id, dim, rows, seq, vids, extra)
            status, committed = self._commit(keys=call["keys"], args=call["args"])
            if text(status) != "blocks":
                break
            extra += len(rows)
        return self._answer(status, committed, model_id, dim)

    def commit_many(
        self, requests: Sequence[CommitRequest]
    ) -> list[dict[str, int] | ModelMismatch]:
        """`commit` for several (user, model id, dim, rows) at once, each answered on its
        own: item -> id, or the `ModelMismatch` `commit` would raise. The ids read and the
        scripts are each one pipeline (per node on a cluster), so a chunk of many users
        costs two round trips, not two per user; a user whose ids moved on meanwhile
        (`blocks`) is committed again alone."""
        for _, _, dim, rows in requests:
            self._check_rows(rows, dim)
        k = self._k
        pipe = self._r.pipeline(transaction=False)
        for user, _, _, rows in requests:
            pipe.get(k.vseq(user))
            pipe.hmget(k.vid(user), [r[0] for r in rows] or ["\0"])
        known = pipe.execute()
        calls: list[ScriptCall] = []
        for n, (user, model_id, dim, rows) in enumerate(requests):
            seq, vids = int(known[2 * n] or 0), known[2 * n + 1]
            call = self._commit_call(user, model_id, dim, rows, seq, vids, 0)
            calls.append((self._commit, call["keys"], call["args"]))
        out: list[dict[str, int] | ModelMismatch] = []
        for (user, model_id, dim, rows), (status, committed) in zip(
            requests, run_scripts(self._r, calls), strict=True
        ):
            try:
                if text(status) == "blocks":
                    out.append(self.commit(user, model_id, dim, rows))
                else:
                    out.append(self._answer(status, committed, model_id, dim))
            except ModelMismatch as exc:
                out.append(exc)
        return out

    @staticmethod
    def _check_rows(rows: list[CommitRow], dim: int) -> None:
        row = 4 * dim
        for item, blob, *_ in rows:
            if len(blob) != row:
                raise ValueError(f"{item}: {len(blob)} vector bytes, not {row} (dim {dim})")

    def _ids_known(self, user: str, rows: list[CommitRow]) -> tuple[int, list[Any]]:
        """The user's last issued id and the ids the rows' items already have (or None)."""
        k = self._k
        seq = int(self._r.get(k.vseq(user)) or 0)
        items = [r[0] for r in rows]
        return seq, (self._r.hmget(k.vid(user), items) if items else [])

    def _commit_call(
        self,
        user: str,
        model_id: str,
        dim: int,
        rows: list[CommitRow],
        seq: int,
        vids: list[Any],
        extra: int,
    ) -> dict[str, list[Any]]:
        """COMMIT_VECTORS's keys and args, declaring the blocks of the ids the rows will
        have (`extra` more fresh ids when they moved on since `seq` was read)."""
        k = self._k
        keys = [
            k.processing(user), k.deadline(user), k.done(user), k.errors(user), k.vid(user),
            k.vitem(user), k.vseq(user), k.vinfo(user), k.caption(user), k.vec(user),
            k.vscratch(user), k.ocr(user),
        ]  # fmt: skip
        known = [int(v) for v in vids[: len(rows)] if v is not None]
        fresh = range(seq + 1, seq + len(rows) - len(known) + extra + 1)
        blocks = blocks_of([*known, *fresh], self.per)
        args: list[Any] = [time.time(), model_id, dim, self.per, len(blocks), *blocks]
        for r in rows:
            args += [r[0], r[1], r[2], ocr_record(*r[3:])]
        return {"keys": [*keys, *(k.vblock(user, b) for b in blocks)], "args": args}

    @staticmethod
    def _answer(status: Any, committed: Any, model_id: str, dim: int) -> dict[str, int]:
        status = text(status)
        if status != "ok":
            stored = status.split(":", 1)[1]
            raise ModelMismatch(
                f"this space was indexed with model {stored}; the service now runs "
                f"{model_id}/{dim}. Reset the space (POST /reset) and upload again to re-embed."
            )
        pairs = [text(x) for x in committed]
        return {item: int(vid) for item, vid in zip(pairs[::2], pairs[1::2], strict=True)}

    def infos(self, users: Sequence[str]) -> list[IndexInfo | None]:
        """`info` of several users in one round trip (a pipeline, per node on a cluster)."""
        pipe = self._r.pipeline(transaction=False)
        for user in users:
            pipe.hmget(self._k.vinfo(user), ["model", "dim"])
        return [_info(model, dim) for model, dim in pipe.execute()]

    def info(self, user: str) -> IndexInfo | None:
        return _info(*self._r.hmget(self._k.vinfo(user), ["model", "dim"]))

    def count(self, user: str) -> int:
        """Vectors stored for the user (one `vitem` field each)."""
        return int(self._r.hlen(self._k.vitem(user)))

    def ids(self, user: str, chunk: int = 10_000) -> list[int]:
        """Every stored vector id of the user, ascending."""
        cursor, out = 0, []
        while True:
            cursor, page = self._r.hscan(self._k.vitem(user), cursor, count=chunk)
            out += [int(i) for i in dict(page)]  # type: ignore[arg-type]
            if cursor == 0:
                return sorted(set(out))

    def scan(self, user: str, chunk: int = 10_000) -> Iterator[tuple[list[int], list[bytes]]]:
        """All (ids, vector bytes) of a user, a block at a time, for rebuilding an index.

        Vectors still in the legacy hash are moved into blocks first (once).
        """
        info = self.info(user)
        if info is None:
            return
        self.migrate(user, info.dim, chunk)
        row = 4 * info.dim
        by_block: dict[int, list[int]] = defaultdict(list)
        for vid in self.ids(user, chunk):
            by_block[vid // self.per].append(vid)
        for block in sorted(by_block):
            data: Any = self._r.get(self._k.vblock(user, block)) or b""
            ids, blobs = [], []
            for vid in by_block[block]:
                off = slot_offset(vid, info.dim, self.per)
                blob = data[off : off + row]
                if len(blob) == row:
                    ids.append(vid)
                    blobs.append(bytes(blob))
                else:
                    log.error("vector %d of %s is missing from its block", vid, user)
            if ids:
                yield ids, blobs

    def migrate(self, user: str, dim: int, chunk: int = 10_000) -> int:
        """Move the user's legacy `vec` hash into blocks; returns how many moved (idempotent,
        safe beside commits: each id moves only while the hash still holds it)."""
        legacy = self._k.vec(user)
        moved, cursor = 0, 0
        while self._r.exists(legacy):
            cursor, page = self._r.hscan(legacy, cursor, count=MIGRATE_BATCH)
            pairs = [(int(i), bytes(b)) for i, b in dict(page).items()]  # type: ignore[arg-type]
            for start in range(0, len(pairs), MIGRATE_BATCH):
                batch = pairs[start : start + MIGRATE_BATCH]
                bad = [vid for vid, blob in batch if len(blob) != 4 * dim]
                if bad:
                    raise ValueError(f"legacy vectors {bad[:5]} of {user} are not dim {dim}")
                blocks = blocks_of([vid for vid, _ in batch], self.per)
                args: list[Any] = [dim, self.per, len(blocks), *blocks]
                for vid, blob in batch:
                    args += [vid, blob]
                keys = [legacy, self._k.vscratch(user), *(self._k.vblock(user, b) for b in blocks)]
                moved += int(self._migrate(keys=keys, args=args))
            if cursor == 0:
                break  # one full pass moves every id (commits add none to the hash)
        if moved:
            log.info("moved %d vectors of %s into blocks", moved, user)
        return moved

    def ocr_words(self, user: str) -> dict[str, str]:
        """item -> the words OCR read in it, for every photo where it read some."""
        out: dict[str, str] = {}
        for item, raw in self._r.hscan_iter(self._k.ocr(user), count=1000):
            words = ocr_text(raw)
            if words:
                out[text(item)] = words
        return out

    def ocr_words_of(self, user: str, items: list[str]) -> list[str]:
        """The words OCR read in each of `items` ("" for none)."""
        if not items:
            return []
        return [ocr_text(raw) for raw in self._r.hmget(self._k.ocr(user), items)]

    def ocr_notes(self, user: str) -> dict[str, str]:
        """item -> why OCR read nothing in it (lumen.ocr notes), where it tried and failed."""
        out: dict[str, str] = {}
        for item, raw in self._r.hscan_iter(self._k.ocr(user), count=1000):
            note = str(json.loads(text(raw)).get("note") or "")
            if note:
                out[text(item)] = note
        return out

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
        if not rows:
            return
        start = int(self._r.incrby(k.vseq(user), len(rows))) - len(rows)
        ids = list(range(start + 1, start + len(rows) + 1))
        writes = pack_rows(ids, [blob for _, blob in rows], dim, self.per)
        pipe = self._r.pipeline(transaction=False)  # one user's keys: one slot
        pipe.hset(k.vinfo(user), mapping={"model": model_id, "dim": dim})
        for block, offset, data in writes:
            pipe.setrange(k.vblock(user, block), offset, data)
        now = time.time()
        for vid, (item, _) in zip(ids, rows, strict=True):
            pipe.hset(k.vid(user), item, vid)
            pipe.hset(k.vitem(user), str(vid), item)
            pipe.zadd(k.done(user), {item: now})
        pipe.execute()
        for block in blocks_of(ids, self.per):  # SETRANGE grew them greedily: exact now
            self._compact(keys=[k.vblock(user, block)])

    def last_id(self, user: str) -> int:
        """The last vector id issued to the user (0 before any): part of a snapshot's version."""
        return int(self._r.get(self._k.vseq(user)) or 0)
