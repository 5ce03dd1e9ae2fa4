"""Model upgrades in Redis: the NEXT space a re-embedding fills, the switch, progress, models.

A user's active space is the plain vector keys (`vid`, `vitem`, `vblk`, `vinfo` ...); its
model is `vinfo.model`. A re-embedding writes the deployed model's vectors into the same
layout under the `next:` prefix (`WRITE_SPACE`, idempotent by item), and `SWITCH_SPACE`
renames them onto the active keys in one step once they cover every done item.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from lumen.errors import ModelMismatch
from lumen.keys import NEXT, OLD, VECTOR_BLOCK_IDS, Keys
from lumen.storage import scripts
from lumen.storage.client import Client
from lumen.storage.queue import users_with
from lumen.storage.text import text, text_map
from lumen.storage.vectors import IndexInfo, blocks_of
from lumen.vectors import CommitRow

# Progress states of one user's re-embedding (`reindex:{u}` state field).
PENDING, RUNNING, SWITCHED, FAILED = "pending", "running", "switched", "failed"
UNFINISHED = (PENDING, RUNNING)


@dataclass(frozen=True)
class SwitchResult:
    """`switched`: NEXT is now active (`count` vectors); else `missing` done items lack one."""

    switched: bool
    count: int = 0
    missing: int = 0
    reason: str = ""


class SpaceStore:
    """The NEXT space of each user, the atomic switch, re-embedding progress and the models
    the Embedder has served (so a replica of model B can load A for users still on A)."""

    def __init__(self, client: Client, keys: Keys, per_block: int = VECTOR_BLOCK_IDS) -> None:
        self._r = client
        self._k = keys
        self.per = per_block
        self._write = client.register_script(scripts.WRITE_SPACE)
        self._switch = client.register_script(scripts.SWITCH_SPACE)
        self._delete = client.register_script(scripts.DELETE_KEYS)

    # -- the NEXT space ------------------------------------------------------------------

    def write(
        self, user: str, model_id: str, dim: int, rows: Sequence[CommitRow]
    ) -> dict[str, int]:
        """Store (item, vector bytes, caption) rows in the NEXT space; returns item -> id of
        the rows taken (done or processing items, while the active space holds another model).
        A row's OCR words, if any, are not the space's: the active commit keeps them (ocr:{u}).

        Raises ModelMismatch when the NEXT space holds another model's vectors.
        """
        k = self._k
        for item, blob, *_ in rows:
            if len(blob) != 4 * dim:
                raise ValueError(f"{item}: {len(blob)} vector bytes, not {4 * dim} (dim {dim})")
        if not rows:
            return {}
        keys = [
            k.done(user), k.processing(user), k.vinfo(user), k.vid(user, NEXT),
            k.vitem(user, NEXT), k.vseq(user, NEXT), k.vinfo(user, NEXT), k.vec(user, NEXT),
            k.vscratch(user), k.caption(user),
        ]  # fmt: skip
        items = [row[0] for row in rows]
        extra = 0
        while True:  # again, with more blocks, when ids moved on since they were read
            seq = int(self._r.get(k.vseq(user, NEXT)) or 0)
            known = [int(v) for v in self._r.hmget(k.vid(user, NEXT), items) if v is not None]
            fresh = range(seq + 1, seq + len(rows) - len(known) + extra + 1)
            blocks = blocks_of([*known, *fresh], self.per)
            args: list[Any] = [model_id, dim, self.per, len(blocks), *blocks]
            for row in rows:
                args += [row[0], row[1], row[2]]
            block_keys = [k.vblock(user, b, NEXT) for b in blocks]
            status, written = self._write(keys=[*keys, *block_keys], args=args)
            if text(status) != "blocks":
                break
            extra += len(rows)
        status = text(status)
        if status.startswith("model_mismatch:"):
            raise ModelMismatch(f"the re-embedding space holds {status.split(':', 1)[1]}")
        pairs = [text(x) for x in written]
        return {item: int(vid) for item, vid in zip(pairs[::2], pairs[1::2], strict=True)}

    def info(self, user: str, space: str = NEXT) -> IndexInfo | None:
        model, dim = self._r.hmget(self._k.vinfo(user, space), ["model", "dim"])
        if model is None or dim is None:
            return None
        return IndexInfo(text(model), int(dim))

    def items(self, user: str, space: str = NEXT) -> set[str]:
        """Every item with a vector in `space`."""
        return {text(i) for i in self._r.hkeys(self._k.vid(user, space))}

    def ids(self, user: str, space: str = NEXT) -> list[int]:
        return sorted(int(text(i)) for i in self._r.hkeys(self._k.vitem(user, space)))

    def count(self, user: str, space: str = NEXT) -> int:
        return int(self._r.hlen(self._k.vitem(user, space)))

    def done_items(self, user: str) -> list[str]:
        return [text(i) for i in self._r.zrange(self._k.done(user), 0, -1)]

    def remaining(self, user: str) -> list[str]:
        """Done items with no vector in the NEXT space yet, oldest first: what a (resumed)
        re-embedding still has to do. Recomputed from Redis, so a crash loses nothing."""
        from lumen.upgrade import remaining

        return remaining(self.done_items(user), self.items(user))

    def drop(self, user: str, space: str = NEXT) -> None:
        """Delete one of the user's non-active spaces (NEXT of a model no longer deployed)."""
        k = self._k
        last = int(self._r.get(k.vseq(user, space)) or 0)
        keys = [*k.space_keys(user, space), k.vseq(user, space), *k.vblocks(user, last, space)]
        self._delete(keys=keys)

    def switch(self, user: str, model_id: str, keep_old: bool = False) -> SwitchResult:
        """Make NEXT the active space, atomically, if it covers every done item."""
        k = self._k
        spaces = ("", NEXT, OLD)
        fixed = [
            key
            for s in spaces
            for key in (k.vinfo(user, s), k.vid(user, s), k.vitem(user, s), k.vseq(user, s),
                        k.vec(user, s))
        ]  # fmt: skip
        while True:
            last = int(self._r.get(k.vseq(user)) or 0)
            last_next = int(self._r.get(k.vseq(user, NEXT)) or 0)
            old = list(range(last // self.per + 1))
            new = list(range(last_next // self.per + 1))
            keys = [
                k.done(user), *fixed,
                *(k.vblock(user, b) for b in old), *(k.vblock(user, b, OLD) for b in old),
                *(k.vblock(user, b, NEXT) for b in new), *(k.vblock(user, b) for b in new),
            ]  # fmt: skip
            args = [model_id, "1" if keep_old else "0", len(old), len(new), last, last_next]
            status, n = self._switch(keys=keys, args=args)
            if text(status) != "blocks":
                break
        status = text(status)
        if status == "ok":
            return SwitchResult(True, count=int(n))
        return SwitchResult(False, missing=int(n), reason=status)

    # -- progress ------------------------------------------------------------------------

    def set_progress(self, user: str, **fields: Any) -> None:
        values: dict[str | bytes, str] = {key: str(value) for key, value in fields.items()}
        values["updated"] = f"{time.time():.3f}"
        self._r.hset(self._k.reindex(user), mapping=values)  # type: ignore[arg-type]

    def progress(self, user: str) -> dict[str, Any] | None:
        raw = text_map(self._r.hgetall(self._k.reindex(user)))
        if not raw:
            return None
        out: dict[str, Any] = {"state": raw.get("state", ""), "model": raw.get("model", "")}
        for field in ("total", "done"):
            out[field] = int(raw.get(field, 0) or 0)
        if raw.get("error"):
            out["error"] = raw["error"]
        return out

    def users_on_other_models(self, model_id: str, count: int = 1000) -> Iterator[str]:
        """Users whose active space holds another model than `model_id` (one SCAN)."""
        for user in self._users_with(self._k.vinfo, count):
            model = self._r.hget(self._k.vinfo(user), "model")
            if model is not None and text(model) != model_id:
                yield user

    def users_with_progress(self, count: int = 1000) -> list[str]:
        return sorted(self._users_with(self._k.reindex, count))

    def _users_with(self, template: Callable[[str], str], count: int) -> Iterator[str]:
        return users_with(self._r, template, count)

    # -- models and the job --------------------------------------------------------------

    def record_model(self, model_id: str, settings: dict[str, Any]) -> None:
        """Remember how to load `model_id` (each Embedder records the model it serves)."""
        self._r.hset(self._k.models, model_id, json.dumps(settings, sort_keys=True))

    def model_settings(self, model_id: str) -> dict[str, Any] | None:
        raw = self._r.hget(self._k.models, model_id)
        return None if raw is None else dict(json.loads(text(raw)))

    def set_job(self, target: dict[str, Any] | None) -> None:
        if target is None:
            self._r.delete(self._k.reindex_job)
        else:
            self._r.set(self._k.reindex_job, json.dumps(target, sort_keys=True))

    def job(self) -> dict[str, Any] | None:
        raw = self._r.get(self._k.reindex_job)
        return None if raw is None else dict(json.loads(text(raw)))
