"""Snapshots of users' FAISS indexes on the data root, so a cold space loads without a rebuild.

Redis stays the truth: a snapshot is a cache keyed by the user's *vector version* (model,
dim, vector count, last vector id issued, and the item holding that id). A load whose
version differs from what Redis says now, or whose file does not check out, is refused and
the caller rebuilds from Redis.

    <data_dir>/snapshots/<sha256(namespace, user)[:32]>/
        <sha256(model)[:12]>-d<dim>-n<count>-v<last id>.faiss

The file is `faiss.write_index` of the images index followed by a trailer:

    [FAISS index bytes][trailer JSON][u64 trailer length][MAGIC]

The trailer repeats the version and the FAISS byte count, so a truncated or foreign file is
caught by its size before FAISS reads it. Files are written to a unique temporary name,
fsynced and renamed, so a reader sees a whole snapshot or none; a user holds one snapshot at
a time (older versions are deleted when a newer one lands). The directory name is a hash,
so no username can steer a path.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import struct
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import faiss
import numpy as np

from lumen.config import IndexSettings
from lumen.index import IndexKind, UserIndex
from lumen.storage.vectors import IndexInfo

MAGIC = b"LUMENSN1"
FORMAT = 1
_TAIL = struct.Struct("<Q")
_MAX_TRAILER_BYTES = 64 * 1024
SUFFIX = ".faiss"


class VersionSource(Protocol):
    """The vector store's reads a version needs (lumen.storage.VectorStore)."""

    def info(self, user: str) -> IndexInfo | None: ...
    def count(self, user: str) -> int: ...
    def last_id(self, user: str) -> int: ...
    def items_for(self, user: str, ids: list[int]) -> list[str | None]: ...


@dataclass(frozen=True)
class Version:
    """What a user's vectors are at one moment; any commit or reset changes it."""

    model: str
    dim: int
    count: int
    last_id: int
    last_item: str | None

    def file_name(self) -> str:
        model = hashlib.sha256(self.model.encode()).hexdigest()[:12]
        return f"{model}-d{self.dim}-n{self.count}-v{self.last_id}{SUFFIX}"


def read_version(vectors: VersionSource, user: str) -> Version | None:
    """The user's vector version in Redis now; None when nothing is indexed."""
    info = vectors.info(user)
    if info is None:
        return None
    last_id = vectors.last_id(user)
    last_item = vectors.items_for(user, [last_id])[0] if last_id else None
    return Version(
        model=info.model,
        dim=info.dim,
        count=vectors.count(user),
        last_id=last_id,
        last_item=last_item,
    )


class SnapshotRejected(Exception):
    """A snapshot exists but cannot be used; `reason` is stale, corrupt or error."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class SnapshotStore:
    """Reads and writes users' snapshots under `root` (one directory per user, by hash)."""

    def __init__(self, root: Path, namespace: str, min_free_bytes: int = 0) -> None:
        self.root = root
        self.namespace = namespace
        self.min_free_bytes = min_free_bytes

    def user_dir(self, user: str) -> Path:
        digest = hashlib.sha256(f"{self.namespace}\0{user}".encode()).hexdigest()[:32]
        return self.root / digest

    def path(self, user: str, version: Version) -> Path:
        return self.user_dir(user) / version.file_name()

    def exists(self, user: str, version: Version) -> bool:
        return self.path(user, version).is_file()

    def save(self, user: str, version: Version, index: UserIndex) -> int:
        """Write `index` as the user's snapshot at `version`; returns its bytes (0: skipped).

        Skipped when the disk would drop below `min_free_bytes` (uploads need it more).
        Older versions of the user's snapshot are deleted once this one is in place.
        """
        if len(index) != version.count or index.dim != version.dim:
            raise ValueError(
                f"index of {len(index)} x {index.dim} does not match version {version}"
            )
        folder = self.user_dir(user)
        folder.mkdir(parents=True, exist_ok=True)
        expected = len(index) * (4 * index.dim + 8)
        if shutil.disk_usage(folder).free - expected < self.min_free_bytes:
            return 0
        final = folder / version.file_name()
        tmp = folder / f".{uuid.uuid4().hex}.tmp"
        raw = _raw(index)
        try:
            faiss.write_index(raw, str(tmp))
            index_bytes = tmp.stat().st_size
            trailer = json.dumps(
                {
                    "format": FORMAT,
                    **asdict(version),
                    "kind": str(index.kind),
                    "trained_at": _trained_at(index),
                    "index_bytes": index_bytes,
                }
            ).encode()
            with open(tmp, "ab") as handle:
                handle.write(trailer + _TAIL.pack(len(trailer)) + MAGIC)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, final)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        _fsync_dir(folder)
        self._remove_others(folder, keep=final.name)
        return final.stat().st_size

    def load(self, user: str, version: Version, settings: IndexSettings) -> UserIndex | None:
        """The user's images index from the snapshot at `version`; None when there is none.

        Raises `SnapshotRejected` (after deleting what was found) for a snapshot of another
        version or one that does not check out; the caller rebuilds from Redis.
        """
        folder = self.user_dir(user)
        path = folder / version.file_name()
        if not path.is_file():
            stale = self._remove_others(folder, keep=None)
            if stale:
                raise SnapshotRejected("stale", f"{stale} snapshot(s) of another version")
            return None
        try:
            return _read(path, version, settings)
        except SnapshotRejected:
            path.unlink(missing_ok=True)
            raise
        except (OSError, RuntimeError, ValueError, KeyError, TypeError) as exc:
            path.unlink(missing_ok=True)
            raise SnapshotRejected("corrupt", f"{path.name}: {exc}") from exc

    def remove(self, user: str) -> None:
        """Forget every snapshot of the user (their space was reset)."""
        shutil.rmtree(self.user_dir(user), ignore_errors=True)

    def _remove_others(self, folder: Path, keep: str | None) -> int:
        """Delete the folder's files but `keep` (other versions, leftover temporaries)."""
        removed = 0
        with contextlib.suppress(FileNotFoundError):
            for entry in folder.iterdir():
                if entry.name != keep:
                    with contextlib.suppress(FileNotFoundError):
                        entry.unlink()
                        removed += entry.suffix == SUFFIX
        return removed


def _read(path: Path, version: Version, settings: IndexSettings) -> UserIndex:
    size = path.stat().st_size
    with open(path, "rb") as handle:
        if size < _TAIL.size + len(MAGIC):
            raise SnapshotRejected("corrupt", f"{path.name} is {size} bytes")
        handle.seek(size - _TAIL.size - len(MAGIC))
        tail = handle.read(_TAIL.size + len(MAGIC))
        if tail[_TAIL.size :] != MAGIC:
            raise SnapshotRejected("corrupt", f"{path.name} has no snapshot trailer")
        (trailer_len,) = _TAIL.unpack(tail[: _TAIL.size])
        if trailer_len > _MAX_TRAILER_BYTES or trailer_len > size:
            raise SnapshotRejected("corrupt", f"{path.name}: trailer of {trailer_len} bytes")
        handle.seek(size - _TAIL.size - len(MAGIC) - trailer_len)
        meta = json.loads(handle.read(trailer_len))
    if meta.get("format") != FORMAT:
        raise SnapshotRejected("stale", f"{path.name}: format {meta.get('format')}")
    found = Version(meta["model"], meta["dim"], meta["count"], meta["last_id"], meta["last_item"])
    if found != version:
        raise SnapshotRejected("stale", f"{path.name} holds {found}, Redis has {version}")
    if meta["index_bytes"] + trailer_len + _TAIL.size + len(MAGIC) != size:
        raise SnapshotRejected("corrupt", f"{path.name}: {size} bytes, not what it declares")
    raw = faiss.read_index(str(path))
    return _wrap(raw, version, IndexKind(meta["kind"]), int(meta["trained_at"]), settings)


def vectors_of(index: UserIndex, ids: np.ndarray) -> np.ndarray:
    """The stored vectors of `ids` (each must be present), row-aligned, by id lookup."""
    raw = _raw(index)
    out = np.empty((len(ids), index.dim), dtype=np.float32)
    for row, vid in enumerate(ids):
        out[row] = raw.reconstruct(int(vid))
    return out


def _raw(index: UserIndex) -> faiss.Index:
    # UserIndex keeps its FAISS index private; snapshots are the one reader besides itself.
    return index._index


def _trained_at(index: UserIndex) -> int:
    return int(index._trained_at)


def _wrap(
    raw: faiss.Index, version: Version, kind: IndexKind, trained_at: int, settings: IndexSettings
) -> UserIndex:
    """A UserIndex around a FAISS index read back, after checking it is what was written."""
    if raw.ntotal != version.count or raw.d != version.dim:
        raise SnapshotRejected(
            "corrupt", f"index holds {raw.ntotal} x {raw.d}, expected {version.count}"
        )
    if kind is IndexKind.IVF:
        if not isinstance(raw, faiss.IndexIVFFlat):
            raise SnapshotRejected("corrupt", f"expected an IVF index, got {type(raw).__name__}")
        if raw.direct_map.type != faiss.DirectMap.Hashtable:  # type: ignore[attr-defined]
            raise SnapshotRejected("corrupt", "IVF index without its id hashtable")
        raw.nprobe = settings.ivf_nprobe
    elif not isinstance(raw, faiss.IndexIDMap2):
        raise SnapshotRejected("corrupt", f"expected a flat id map, got {type(raw).__name__}")
    index = UserIndex(
        version.dim,
        approximate_threshold=settings.approximate_threshold,
        nprobe=settings.ivf_nprobe,
    )
    index._index = raw
    index._kind = kind
    index._max_id = None  # read from the ids when an upsert first needs it
    index._trained_at = trained_at
    index._reshape_if_needed()  # the threshold may have changed since it was written
    return index


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
