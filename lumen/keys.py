"""Every Redis key template, in one place (the arq habit).

Lua scripts receive every key they touch from here (KEYS); none is built inside Lua. Each
per-user key carries the user as a Redis Cluster hash tag (`lumen:queue:{alice}`), so one
user's keys share a slot and every script runs in one slot: the store runs unchanged on a
single Redis and on Redis Cluster (see docs/operations.md). No key holds every user's work:
the cross-user indexes are split per dispatcher shard (`shard_of`) and kept outside the
scripts (announce before the script, re-check after a removal; see `lumen.storage.queue`).

Per user `u` (items are the user-relative paths the API shows, e.g. `uploads/u/a.jpg`):

    user:{u}            hash   password hash, created
    queue:{u}           list   queued items, oldest first
    processing:{u}      hash   item -> worker id
    deadline:{u}        zset   item -> deadline (epoch s) of each item in processing
    done:{u}            zset   item -> completion time
    errors:{u}          hash   item -> last error message
    retries:{u}         hash   item -> retry count
    meta:{u}            hash   item -> JSON metadata (sha256, size, kind, doc, page)
    caption:{u}         hash   item -> zero-shot caption made at indexing time
    ocr:{u}             hash   photo item -> JSON {"text", "note"}: the words OCR read in it
                               (bounded by `ocr.max_text_bytes`) or why it read none
    pdftext:{u}         hash   PDF page item -> the page's extracted text
    sha:{u}             hash   sha256 -> item (content dedupe)
    vblk:{u}:{b}        string vectors of ids b*4095 .. b*4095+4094: id i's float32 bytes at
                               offset (i % 4095) * dim * 4 (SETRANGE; ~1.0x raw bytes)
    vscratch:{u}        string scratch of the vector scripts, deleted before each returns
    vec:{u}             hash   LEGACY vector id -> float32 bytes; moved into blocks on load
    vid:{u}             hash   item -> vector id
    vitem:{u}           hash   vector id -> item (one field per stored vector: the count)
    vseq:{u}            string last vector id issued (kept by reset: ids are never reused)
    vinfo:{u}           hash   model, dim of the user's vectors (the ACTIVE space's model)
    next:vblk|vid|vitem|vseq|vinfo:{u}   the space a re-embedding fills with the deployed
                               model (same layout); renamed onto the active keys by the switch
    old:vblk|vid|vitem|vseq|vinfo:{u}    the previous active space, kept only when
                               `reindex.keep_old_space` is set
    reindex:{u}         hash   re-embedding progress: state, model, total, done, updated
    usage:{u}           hash   bytes, items: the stored files of the user's items (quotas)
    reply:{u}:{token}   string a script call's answer, kept a few minutes (idempotent retries)

Cross-user, one per dispatcher shard `s` (users hash to shards by `shard_of`):

    active:<s>          set    users of the shard that may have queued items (round robin)
    deadlines:<s>       zset   user -> a time at or before the user's earliest deadline

Global (small, bounded, not per-user work):

    events              list   monitor events, newest first (capped)
    models              hash   model id -> JSON model settings (each Embedder records its own)
    reindex-job         string JSON model settings the re-embedding job targets
    heartbeat           hash   worker id -> JSON metrics
    throttle:{subject}  string attempt counter with a TTL (the subject is not a hash tag):
                               `login-addr:A`, `login-user:U|A`, `signup-addr:A`, A an address
    deadline, active    LEGACY global zset/set of the single-Redis layout; a dispatcher
                               moves what they hold into the per-user/per-shard keys at start
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

# Vector ids per `vblk` string. 4095, not 4096: a full block plus the string's 10-byte
# header then fits the allocator size class of 4096 rows (for dim 512: 8 MiB) instead of
# spilling into the next class, 25% larger.
VECTOR_BLOCK_IDS = 4095

# Spaces besides the active one (no prefix): the one a re-embedding fills, and the previous
# active space kept after a switch when `reindex.keep_old_space` is set.
NEXT = "next:"
OLD = "old:"


def shard_of(user: str, shards: int) -> int:
    """Stable user -> shard (crc32: the same in every process, unlike hash())."""
    return zlib.crc32(user.encode()) % max(1, shards)


@dataclass(frozen=True)
class Keys:
    """Key templates under one namespace; tests give each run its own namespace."""

    ns: str = "lumen"

    def user(self, user: str) -> str:
        return f"{self.ns}:user:{{{user}}}"

    def queue(self, user: str) -> str:
        return f"{self.ns}:queue:{{{user}}}"

    def processing(self, user: str) -> str:
        return f"{self.ns}:processing:{{{user}}}"

    def deadline(self, user: str) -> str:
        """The user's items in processing, scored by their deadline."""
        return f"{self.ns}:deadline:{{{user}}}"

    def deadlines(self, shard: int) -> str:
        """Users of dispatcher shard `shard` with items in processing -> earliest deadline."""
        return f"{self.ns}:deadlines:{shard}"

    def active(self, shard: int) -> str:
        """Users of dispatcher shard `shard` that may have queued items."""
        return f"{self.ns}:active:{shard}"

    @property
    def legacy_deadline(self) -> str:
        """The single-Redis layout's global deadline zset (`user NUL item` -> deadline)."""
        return f"{self.ns}:deadline"

    @property
    def legacy_active(self) -> str:
        """The single-Redis layout's global set of users with queued items."""
        return f"{self.ns}:active"

    def done(self, user: str) -> str:
        return f"{self.ns}:done:{{{user}}}"

    def errors(self, user: str) -> str:
        return f"{self.ns}:errors:{{{user}}}"

    def retries(self, user: str) -> str:
        return f"{self.ns}:retries:{{{user}}}"

    def meta(self, user: str) -> str:
        return f"{self.ns}:meta:{{{user}}}"

    def caption(self, user: str) -> str:
        return f"{self.ns}:caption:{{{user}}}"

    def ocr(self, user: str) -> str:
        return f"{self.ns}:ocr:{{{user}}}"

    def pdftext(self, user: str) -> str:
        return f"{self.ns}:pdftext:{{{user}}}"

    def sha(self, user: str) -> str:
        return f"{self.ns}:sha:{{{user}}}"

    def vec(self, user: str, space: str = "") -> str:
        """LEGACY: the hash of id -> vector bytes that blocks replaced (moved on load)."""
        return f"{self.ns}:{space}vec:{{{user}}}"

    def vblock(self, user: str, block: int, space: str = "") -> str:
        """Vectors of ids `block * VECTOR_BLOCK_IDS` onwards, packed in one string."""
        return f"{self.ns}:{space}vblk:{{{user}}}:{block}"

    def vscratch(self, user: str) -> str:
        """Scratch space of the vector scripts (grows a block exactly); never left behind."""
        return f"{self.ns}:vscratch:{{{user}}}"

    def vblocks(self, user: str, last_id: int, space: str = "") -> list[str]:
        """Every block key that ids 1..`last_id` can have used."""
        return [self.vblock(user, b, space) for b in range(last_id // VECTOR_BLOCK_IDS + 1)]

    def space_keys(self, user: str, space: str) -> list[str]:
        """The fixed-name vector keys of one of the user's spaces (`NEXT`, `OLD`)."""
        return [self.vid(user, space), self.vitem(user, space), self.vinfo(user, space)]

    def reindex(self, user: str) -> str:
        """The user's re-embedding progress: state, model, total, done, updated."""
        return f"{self.ns}:reindex:{{{user}}}"

    @property
    def models(self) -> str:
        """Model id -> JSON model settings of every model the Embedder has served."""
        return f"{self.ns}:models"

    @property
    def reindex_job(self) -> str:
        """JSON model settings the re-embedding job targets (read again after a restart)."""
        return f"{self.ns}:reindex-job"

    def vid(self, user: str, space: str = "") -> str:
        return f"{self.ns}:{space}vid:{{{user}}}"

    def vitem(self, user: str, space: str = "") -> str:
        return f"{self.ns}:{space}vitem:{{{user}}}"

    def vseq(self, user: str, space: str = "") -> str:
        return f"{self.ns}:{space}vseq:{{{user}}}"

    def vinfo(self, user: str, space: str = "") -> str:
        return f"{self.ns}:{space}vinfo:{{{user}}}"

    def usage(self, user: str) -> str:
        return f"{self.ns}:usage:{{{user}}}"

    def reply(self, user: str, token: str) -> str:
        """The remembered answer of one script call, so a resent call gets the same answer."""
        return f"{self.ns}:reply:{{{user}}}:{token}"

    @property
    def events(self) -> str:
        return f"{self.ns}:events"

    @property
    def heartbeat(self) -> str:
        return f"{self.ns}:heartbeat"

    def user_keys(self, user: str) -> list[str]:
        """Every per-user key of fixed name that `reset` clears (not the account itself, not
        `vseq`); the vector blocks are `vblocks(user, last id)`."""
        return [
            self.queue(user),
            self.processing(user),
            self.deadline(user),
            self.done(user),
            self.errors(user),
            self.retries(user),
            self.meta(user),
            self.caption(user),
            self.ocr(user),
            self.pdftext(user),
            self.sha(user),
            self.vec(user),
            self.vscratch(user),
            self.vid(user),
            self.vitem(user),
            self.vinfo(user),
            self.usage(user),
            *self.space_keys(user, NEXT),
            *self.space_keys(user, OLD),
            self.vseq(user, NEXT),
            self.vseq(user, OLD),
            self.reindex(user),
        ]

    def throttle(self, subject: str) -> str:
        """An attempt counter with a TTL; `subject` is e.g. `login-addr:{a}`, `signup-addr:{a}`."""
        return f"{self.ns}:throttle:{subject}"
