"""Snapshots: a user's index written and read back exactly, or refused and deleted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lumen.config import IndexSettings
from lumen.index import IndexKind
from lumen.snapshots import MAGIC, SnapshotRejected, SnapshotStore, Version, vectors_of
from lumen.spaces import new_index
from lumen.vectors import normalize

DIM = 16
SMALL_IVF = IndexSettings(approximate_threshold=100, ivf_nprobe=4)


def vectors(n: int, seed: int = 0) -> np.ndarray:
    return normalize(np.random.default_rng(seed).standard_normal((n, DIM)))


def version_of(n: int, last_item: str | None = None) -> Version:
    return Version("m", DIM, n, n, last_item or f"uploads/u/{n}.jpg")


def hits(index: object, queries: np.ndarray) -> list[list[tuple[int, float]]]:
    return [[(h.id, h.score) for h in row] for row in index.search(queries, 10)]  # type: ignore[attr-defined]


@pytest.mark.parametrize("n", [50, 300])
def test_a_snapshot_reads_back_to_the_same_index(tmp_path: Path, n: int) -> None:
    store = SnapshotStore(tmp_path, "ns")
    ids = np.arange(1, n + 1)
    built = new_index(DIM, SMALL_IVF, ids, vectors(n))
    assert built.kind is (IndexKind.FLAT if n <= 100 else IndexKind.IVF)
    assert store.save("u", version_of(n), built) > 0

    loaded = store.load("u", version_of(n), SMALL_IVF)

    assert loaded is not None and loaded.kind is built.kind and len(loaded) == n
    queries = vectors(5, seed=1)
    assert hits(loaded, queries) == hits(built, queries)  # same ids, same scores
    assert np.array_equal(vectors_of(loaded, ids[:3]), vectors_of(built, ids[:3]))
    # it stays a working index: an id it held is replaced, not added twice; ids are removed
    # and added by id
    loaded.upsert(np.array([3]), vectors(1, seed=3))
    assert len(loaded) == n
    assert hits(loaded, vectors(1, seed=3))[0][0][0] == 3
    assert loaded.remove(np.array([1, 2])) == 2
    loaded.upsert(np.array([n + 1]), vectors(1, seed=2))
    assert len(loaded) == n - 1


def test_no_snapshot_is_none_and_another_version_is_refused_and_deleted(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, "ns")
    assert store.load("u", version_of(10), SMALL_IVF) is None
    store.save("u", version_of(10), new_index(DIM, SMALL_IVF, np.arange(1, 11), vectors(10)))

    with pytest.raises(SnapshotRejected) as refused:
        store.load("u", version_of(11), SMALL_IVF)  # Redis has one more vector now

    assert refused.value.reason == "stale"
    assert list(store.user_dir("u").iterdir()) == []  # the stale file went
    assert store.load("u", version_of(10), SMALL_IVF) is None


def test_a_reset_and_an_upload_of_as_many_vectors_is_not_mistaken_for_the_old_space(
    tmp_path: Path,
) -> None:
    store = SnapshotStore(tmp_path, "ns")
    index = new_index(DIM, SMALL_IVF, np.arange(1, 11), vectors(10))
    store.save("u", version_of(10, "uploads/u/old.jpg"), index)
    # the file is found by name (same count and last id) but the trailer's last item differs
    path = store.path("u", version_of(10, "uploads/u/new.jpg"))
    assert path.is_file()

    with pytest.raises(SnapshotRejected) as refused:
        store.load("u", version_of(10, "uploads/u/new.jpg"), SMALL_IVF)

    assert refused.value.reason == "stale" and not path.exists()


@pytest.mark.parametrize("damage", ["truncate", "insert", "trailer", "faiss"])
def test_a_damaged_snapshot_is_refused_as_corrupt_and_deleted(tmp_path: Path, damage: str) -> None:
    store = SnapshotStore(tmp_path, "ns")
    v = version_of(300)
    store.save("u", v, new_index(DIM, SMALL_IVF, np.arange(1, 301), vectors(300)))
    path = store.path("u", v)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "insert":
        data[100:100] = b"\0" * 10  # the trailer still ends the file; the sizes disagree
    elif damage == "trailer":
        data[-1] ^= 0xFF  # the magic
    else:
        data[:4] = b"XXXX"  # FAISS's own header
    path.write_bytes(bytes(data))

    with pytest.raises(SnapshotRejected) as refused:
        store.load("u", v, SMALL_IVF)

    assert refused.value.reason == "corrupt" and not path.exists()


def test_the_trailer_names_the_version_and_the_sizes(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, "ns")
    v = version_of(20)
    size = store.save("u", v, new_index(DIM, SMALL_IVF, np.arange(1, 21), vectors(20)))
    data = store.path("u", v).read_bytes()
    assert len(data) == size and data.endswith(MAGIC)
    trailer_len = int.from_bytes(data[-16:-8], "little")
    meta = json.loads(data[-16 - trailer_len : -16])
    assert (meta["count"], meta["last_id"], meta["kind"]) == (20, 20, "flat")
    assert meta["index_bytes"] == size - trailer_len - 16


def test_a_new_version_replaces_the_old_one_and_leftover_temporaries(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, "ns")
    store.save("u", version_of(10), new_index(DIM, SMALL_IVF, np.arange(1, 11), vectors(10)))
    (store.user_dir("u") / ".dead-writer.tmp").write_bytes(b"half a snapshot")

    store.save("u", version_of(12), new_index(DIM, SMALL_IVF, np.arange(1, 13), vectors(12)))

    assert [p.name for p in store.user_dir("u").iterdir()] == [version_of(12).file_name()]
    store.remove("u")
    assert not store.user_dir("u").exists()


def test_a_hostile_username_cannot_steer_the_path(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "snapshots", "ns")
    for name in ["../../etc", "/abs", "a/b", "..", "u\0x"]:
        folder = store.user_dir(name)
        assert folder.parent == tmp_path / "snapshots"
        assert len(folder.name) == 32 and all(c in "0123456789abcdef" for c in folder.name)
    assert store.user_dir("alice") != SnapshotStore(tmp_path, "other-ns").user_dir("alice")


def test_no_snapshot_is_written_when_the_disk_would_fall_below_the_free_space_floor(
    tmp_path: Path,
) -> None:
    store = SnapshotStore(tmp_path, "ns", min_free_bytes=2**62)
    v = version_of(10)
    assert store.save("u", v, new_index(DIM, SMALL_IVF, np.arange(1, 11), vectors(10))) == 0
    assert not store.exists("u", v)


def test_an_index_that_does_not_match_its_version_is_not_written(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, "ns")
    with pytest.raises(ValueError, match="does not match"):
        store.save("u", version_of(11), new_index(DIM, SMALL_IVF, np.arange(1, 11), vectors(10)))
