"""A shard's spaces: a memory budget with LRU eviction, snapshots, and re-hashing of users."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from actors.index_shard import shard_options
from actors.naming import index_shard_number, shard_for
from lumen.config import Settings
from lumen.snapshots import SnapshotStore
from lumen.spaces import SpaceRegistry, bm25_bytes, index_bytes
from lumen.storage.vectors import IndexInfo
from lumen.vectors import normalize

DIM = 16
N = 40  # vectors per user
SPACE_BYTES = N * (4 * DIM + 48)  # what the registry accounts for one such space


def vectors(n: int, seed: int) -> np.ndarray:
    return normalize(np.random.default_rng(seed).standard_normal((n, DIM)))


class UsersVectors:
    """The vector store's reads for many users: user -> id -> (item, vector)."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[int, tuple[str, np.ndarray]]] = {}
        self.scans: list[str] = []

    def fill(self, user: str, n: int = N, seed: int = 0) -> None:
        for vid, vec in enumerate(vectors(n, seed), start=len(self.rows.get(user, {})) + 1):
            self.rows.setdefault(user, {})[vid] = (f"uploads/{user}/{vid}.jpg", vec)

    def info(self, user: str) -> IndexInfo | None:
        return IndexInfo("m", DIM) if self.rows.get(user) else None

    def count(self, user: str) -> int:
        return len(self.rows.get(user, {}))

    def last_id(self, user: str) -> int:
        return max(self.rows.get(user, {}), default=0)

    def scan(self, user: str) -> Iterator[tuple[list[int], list[bytes]]]:
        self.scans.append(user)
        rows = self.rows.get(user, {})
        ids = sorted(rows)
        yield ids, [rows[i][1].astype("<f4").tobytes() for i in ids]

    def items_for(self, user: str, ids: list[int]) -> list[str | None]:
        rows = self.rows.get(user, {})
        return [rows[i][0] if i in rows else None for i in ids]

    def ids_for(self, user: str, items: list[str]) -> list[int | None]:
        by_item = {item: vid for vid, (item, _) in self.rows.get(user, {}).items()}
        return [by_item.get(i) for i in items]

    def describe(self, user: str, ids: list[int]) -> list[tuple[str | None, str]]:
        return [(item, "") for item in self.items_for(user, ids)]


class Recorder:
    """`ShardMetrics` in memory."""

    def __init__(self) -> None:
        self.memory: list[tuple[int, int]] = []
        self.evictions = 0
        self.loads: list[str] = []
        self.writes = 0
        self.rejects: list[str] = []

    def shard_memory(self, held_bytes: int, spaces: int) -> None:
        self.memory.append((held_bytes, spaces))

    def shard_evictions(self, n: int) -> None:
        self.evictions += n

    def index_load_seconds(self, source: str, seconds: float) -> None:
        self.loads.append(source)

    def snapshot_writes(self, n: int) -> None:
        self.writes += n

    def snapshot_rejects(self, reason: str, n: int) -> None:
        self.rejects.append(reason)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def stores(vecs: UsersVectors) -> Any:
    return SimpleNamespace(
        vectors=vecs,
        queue=SimpleNamespace(
            pdf_items=lambda user: [],
            pdf_texts=lambda u: {},
            meta=lambda u, items: [None] * len(items),
        ),
    )


def registry(
    vecs: UsersVectors,
    budget: int = 0,
    snapshots: Path | None = None,
    clock: Clock | None = None,
    **index: Any,
) -> tuple[SpaceRegistry, Recorder]:
    settings = Settings(
        index={"shard_memory_bytes": budget, "snapshot_min_vectors": 10, **index}  # type: ignore[arg-type]
    )
    store = SnapshotStore(snapshots, "ns") if snapshots is not None else None
    recorder = Recorder()
    reg = SpaceRegistry(
        settings, stores(vecs), snapshots=store, metrics=recorder, clock=clock or Clock()
    )
    return reg, recorder


def results(reg: SpaceRegistry, user: str, seed: int = 99) -> list[tuple[str, float]]:
    return [(h.item, h.similarity) for h in reg.search(user, vectors(1, seed)[0], 10)]


def test_the_least_recently_used_space_goes_first_when_the_budget_is_exceeded() -> None:
    vecs = UsersVectors()
    for seed, user in enumerate("abc"):
        vecs.fill(user, seed=seed)
    reg, rec = registry(vecs, budget=2 * SPACE_BYTES)

    reg.load("a")
    reg.load("b")
    reg.search("a", vectors(1, 5)[0], 3)  # a is used again: b is now the coldest
    reg.load("c")

    assert list(reg.spaces) == ["a", "c"]
    assert reg.counters.evictions == 1 and rec.evictions == 1
    assert reg.held_bytes() <= 2 * SPACE_BYTES
    assert rec.memory[-1] == (reg.held_bytes(), 2)
    assert max(held for held, _ in rec.memory) <= 2 * SPACE_BYTES


def test_the_space_being_served_is_kept_even_when_it_alone_exceeds_the_budget() -> None:
    vecs = UsersVectors()
    vecs.fill("a", seed=1)
    vecs.fill("big", n=4 * N, seed=2)
    reg, _ = registry(vecs, budget=2 * SPACE_BYTES)
    reg.load("a")

    hits = reg.search("big", vectors(1, 3)[0], 5)

    assert len(hits) == 5 and list(reg.spaces) == ["big"]  # a went, big stays while served
    assert reg.search("a", vectors(1, 3)[0], 5)  # and a comes back, pushing big out
    assert list(reg.spaces) == ["a"]


def test_no_budget_means_nothing_is_evicted() -> None:
    vecs = UsersVectors()
    for seed, user in enumerate("abcdef"):
        vecs.fill(user, seed=seed)
    reg, _ = registry(vecs, budget=0)
    for user in "abcdef":
        reg.load(user)
    assert len(reg.spaces) == 6 and reg.counters.evictions == 0


def test_an_evicted_space_comes_back_from_its_snapshot_with_identical_results(
    tmp_path: Path,
) -> None:
    vecs = UsersVectors()
    vecs.fill("a", seed=1)
    reg, rec = registry(vecs, snapshots=tmp_path)
    before = results(reg, "a")
    assert vecs.scans == ["a"]  # built from Redis once

    assert reg.evict("a")  # changed since it was built: snapshotted on the way out

    assert "a" not in reg.spaces and rec.writes == 1
    assert results(reg, "a") == before  # same items, same scores
    assert vecs.scans == ["a"] and rec.loads == ["redis", "snapshot"]
    assert reg.counters.loads == {"redis": 1, "snapshot": 1}


def test_a_space_whose_snapshot_is_behind_redis_is_rebuilt_from_redis(tmp_path: Path) -> None:
    vecs = UsersVectors()
    vecs.fill("a", seed=1)
    reg, rec = registry(vecs, snapshots=tmp_path)
    reg.load("a")
    reg.evict("a")
    vecs.fill("a", n=5, seed=7)  # a commit the snapshot never saw (another shard made it)

    hits = reg.search("a", vectors(1, 7)[0], 1)

    assert hits[0].item == f"uploads/a/{N + 1}.jpg"  # the new vector is found
    assert rec.rejects == ["stale"] and vecs.scans == ["a", "a"]
    assert len(reg.spaces["a"].images) == N + 5


def test_commits_are_snapshotted_once_the_space_has_been_quiet(tmp_path: Path) -> None:
    vecs = UsersVectors()
    vecs.fill("a", seed=1)
    clock = Clock()
    reg, rec = registry(
        vecs, snapshots=tmp_path, clock=clock, snapshot_debounce_s=10, snapshot_max_delay_s=60
    )
    reg.load("a")  # a rebuild counts as a change
    assert reg.flush() == 0  # not quiet yet

    for step in range(8):  # a commit every 8 s: never quiet for 10 s
        clock.now += 8
        vid = N + 1 + step
        vec = vectors(1, 100 + step)[0]
        vecs.rows["a"][vid] = (f"uploads/a/{vid}.jpg", vec)
        reg.add("a", {f"uploads/a/{vid}.jpg": vid}, {f"uploads/a/{vid}.jpg": vec})
        written = reg.flush()
        assert written == (1 if step == 7 else 0), step  # 64 s dirty: past the 60 s delay
    assert rec.writes == 1
    clock.now += 9
    assert reg.flush() == 0  # nothing changed since that snapshot
    vecs.rows["a"][N + 9] = ("uploads/a/late.jpg", vectors(1, 200)[0])
    reg.add("a", {"uploads/a/late.jpg": N + 9}, {"uploads/a/late.jpg": vectors(1, 200)[0]})
    clock.now += 10
    assert reg.flush() == 1  # quiet for the debounce
    store = reg.snapshots
    assert store is not None and len(list(store.user_dir("a").iterdir())) == 1


def test_small_spaces_are_not_snapshotted_unless_asked(tmp_path: Path) -> None:
    vecs = UsersVectors()
    vecs.fill("a", n=5, seed=1)
    clock = Clock()
    reg, rec = registry(vecs, snapshots=tmp_path, clock=clock, snapshot_min_vectors=10)
    reg.load("a")
    clock.now += 3600
    assert reg.flush() == 0 and reg.evict("a") and rec.writes == 0
    reg.load("a")
    assert reg.snapshot("a") and rec.writes == 1


def test_a_reset_drops_the_space_and_its_snapshot(tmp_path: Path) -> None:
    vecs = UsersVectors()
    vecs.fill("a", seed=1)
    reg, _ = registry(vecs, snapshots=tmp_path)
    reg.load("a")
    assert reg.snapshot("a")
    store = reg.snapshots
    assert store is not None and any(store.user_dir("a").iterdir())

    reg.drop("a")

    assert "a" not in reg.spaces and not store.user_dir("a").exists()


def test_a_mirror_that_differs_from_redis_is_never_snapshotted(tmp_path: Path) -> None:
    vecs = UsersVectors()
    vecs.fill("a", seed=1)
    reg, rec = registry(vecs, snapshots=tmp_path)
    reg.load("a")
    vecs.fill("a", n=3, seed=2)  # Redis moved on; this mirror has not converged yet
    assert not reg.snapshot("a") and rec.writes == 0


def test_changing_the_shard_count_moves_each_user_to_exactly_one_shard_without_a_rebuild(
    tmp_path: Path,
) -> None:
    users = [f"user{i}" for i in range(30)]
    vecs = UsersVectors()
    for seed, user in enumerate(users):
        vecs.fill(user, seed=seed)
    before = {}
    old = [registry(vecs, snapshots=tmp_path)[0] for _ in range(2)]
    for user in users:  # two shards, each user on its crc32 shard
        before[user] = results(old[shard_for(user, 2)], user)

    new = [*old, registry(vecs, snapshots=tmp_path)[0]]  # a third shard is added
    for n, reg in enumerate(new):
        reg.release_unowned(lambda user, n=n: shard_for(user, 3) == n)
    vecs.scans.clear()

    for n, reg in enumerate(new):
        assert all(shard_for(user, 3) == n for user in reg.spaces)  # only its own users
    for user in users:
        assert results(new[shard_for(user, 3)], user) == before[user]
    assert vecs.scans == []  # moved users came from the snapshots their old shard wrote
    loaded = [user for reg in new for user in reg.spaces]
    assert sorted(loaded) == sorted(users)  # every user on exactly one shard
    moved = [u for u in users if shard_for(u, 3) != shard_for(u, 2)]
    assert moved and sum(reg.counters.loads["snapshot"] for reg in new) == len(moved)


def test_shards_are_spread_over_nodes_within_their_resources() -> None:
    assert shard_options(Settings()) == {"scheduling_strategy": "SPREAD", "resources": {}}
    pinned = Settings(actor_resources={"head": 0.001})
    assert shard_options(pinned)["resources"] == {"head": 0.001}
    own = Settings(
        actor_resources={"head": 0.001},
        index={"shard_resources": {"index": 1}, "shard_placement": "DEFAULT"},  # type: ignore[arg-type]
    )
    assert shard_options(own) == {"scheduling_strategy": "DEFAULT", "resources": {"index": 1}}


def test_shard_numbers_are_read_back_from_actor_names_only_for_index_shards() -> None:
    assert index_shard_number("lumen", "lumen:index-shard-7") == 7
    assert index_shard_number("lumen", "lumen:dispatcher-1") is None
    assert index_shard_number("lumen", "other:index-shard-1") is None
    assert index_shard_number("lumen", "lumen:index-shard-x") is None


def test_memory_estimates_grow_with_vectors_and_page_text() -> None:
    from lumen.spaces import new_index

    small = new_index(DIM, Settings().index, np.arange(1, 11), vectors(10, 0))
    assert index_bytes(small) == 10 * (4 * DIM + 48)
    assert bm25_bytes({"a": "x" * 100}) > bm25_bytes({"a": "x"}) > 0


@pytest.mark.parametrize("budget", [1, SPACE_BYTES])
def test_pdf_text_index_counts_toward_the_budget(budget: int) -> None:
    vecs = UsersVectors()
    vecs.fill("a", seed=1)
    vecs.fill("b", seed=2)
    reg, _ = registry(vecs, budget=budget)
    reg.stores.queue = SimpleNamespace(
        pdf_items=lambda user: [],
        pdf_texts=lambda user: {f"uploads/{user}/p.pdf#1": "w " * 99},
        meta=lambda user, items: [None] * len(items),
    )
    reg.load("a")
    reg.load("b")  # a evicted: one space fits at most
    assert list(reg.spaces) == ["b"]
    reg.spaces["b"].pdf_pages.upsert(np.array([1]), vectors(1, 3))
    reg.search_pdf("b", vectors(1, 3)[0], "w", 1)
    assert reg.spaces["b"].bm25_bytes > 0 and list(reg.spaces) == ["b"]


def test_pdf_pages_come_back_from_a_snapshot_with_the_same_answers(tmp_path: Path) -> None:
    vecs = UsersVectors()
    vecs.fill("a", seed=1)
    pages = {f"uploads/a/{vid}.jpg": f"page {vid} words" for vid in (3, 7, 11)}
    reg, rec = registry(vecs, snapshots=tmp_path)
    reg.stores.queue = SimpleNamespace(
        pdf_items=lambda user: list(pages),
        pdf_texts=lambda user: pages,
        meta=lambda user, items: [None] * len(items),
    )
    query = vectors(1, 5)[0]
    before = reg.search_pdf("a", query, "words 7", 3)
    assert len(before) == 3 and len(reg.spaces["a"].pdf_pages) == 3

    assert reg.evict("a") and rec.writes == 1
    after = reg.search_pdf("a", query, "words 7", 3)

    assert after == before and reg.counters.loads == {"redis": 1, "snapshot": 1}
    assert vecs.scans == ["a"]


def test_the_held_total_follows_every_load_add_eviction_drop_and_repair() -> None:
    """A running total (O(1) per commit), always the sum of the loaded spaces' sizes."""
    vecs = UsersVectors()
    for seed, user in enumerate("abcd"):
        vecs.fill(user, seed=seed)
    reg, rec = registry(vecs, budget=3 * SPACE_BYTES + 100)

    def exact() -> int:
        return sum(space.nbytes() for space in reg.spaces.values())

    steps: list[Any] = [
        lambda: reg.load("a"),
        lambda: reg.load("b"),
        lambda: reg.add("a", {"new.jpg": 1000}, {"new.jpg": vectors(1, 7)[0]}, "m"),
        lambda: reg.add("a", {"x.jpg": 1001}, {"x.jpg": vectors(1, 8)[0]}, "m", words={"x.jpg"}),
        lambda: reg.load("c"),
        lambda: reg.load("d"),  # over budget: the coldest goes
        lambda: reg.evict("c"),
        lambda: reg.drop("d"),
        lambda: vecs.fill("b", n=3, seed=9),  # the mirror of b missed 3 vectors
        lambda: reg.converge_all(),
        lambda: reg.add("b", {"y.jpg": 2000}, {"y.jpg": vectors(1, 9)[0]}, "other-model"),
    ]
    for step in steps:
        step()
        assert reg.held_bytes() == exact()
        assert rec.memory[-1][0] == reg.held_bytes() or not rec.memory
    assert reg.held_bytes() > 0
