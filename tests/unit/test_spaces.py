"""Spaces: the indexes a shard keeps for its users take their shape from the index settings."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import numpy as np
import pytest

from lumen.config import IndexSettings, Settings
from lumen.errors import SpaceSwitched
from lumen.index import IndexKind
from lumen.spaces import SpaceRegistry, new_index
from lumen.storage.vectors import IndexInfo
from lumen.vectors import normalize

DIM = 32


def vectors(n: int) -> np.ndarray:
    return normalize(np.random.default_rng(0).standard_normal((n, DIM)))


def test_a_new_index_takes_its_threshold_and_nprobe_from_the_settings() -> None:
    settings = IndexSettings(approximate_threshold=100, ivf_nprobe=3)

    built = new_index(DIM, settings, np.arange(200), vectors(200))
    empty = new_index(DIM, settings)

    assert (built.kind, built.nprobe, len(built)) == (IndexKind.IVF, 3, 200)
    assert (empty.kind, empty.nprobe, len(empty)) == (IndexKind.FLAT, 3, 0)
    empty.upsert(np.arange(200), vectors(200))
    assert empty.kind is IndexKind.IVF  # it crossed the configured threshold


class FakeVectors:
    """The vector store's reads, over a dict of id -> (item, vector)."""

    def __init__(self) -> None:
        self.rows: dict[int, tuple[str, np.ndarray]] = {}
        self.words: dict[str, str] = {}  # item -> OCR words
        self.seq = 0
        self.model = "m"  # the active space's model (an upgrade's switch changes it)

    def put(self, vid: int, item: str, vector: np.ndarray) -> None:
        self.rows[vid] = (item, vector.astype("<f4"))
        self.seq = max(self.seq, vid)

    def last_id(self, user: str) -> int:
        return self.seq

    def items_for(self, user: str, ids: list[int]) -> list[str | None]:
        return [self.rows[i][0] if i in self.rows else None for i in ids]

    def info(self, user: str) -> IndexInfo | None:
        return IndexInfo(self.model, DIM) if self.rows else None

    def count(self, user: str) -> int:
        return len(self.rows)

    def scan(self, user: str) -> Iterator[tuple[list[int], list[bytes]]]:
        ids = sorted(self.rows)
        yield ids, [self.rows[i][1].tobytes() for i in ids]

    def ids_for(self, user: str, items: list[str]) -> list[int | None]:
        by_item = {item: vid for vid, (item, _) in self.rows.items()}
        return [by_item.get(i) for i in items]

    def describe(self, user: str, ids: list[int]) -> list[tuple[str | None, str]]:
        return [(self.rows[i][0], "") if i in self.rows else (None, "") for i in ids]

    def ocr_words(self, user: str) -> dict[str, str]:
        return dict(self.words)

    def ocr_words_of(self, user: str, items: list[str]) -> list[str]:
        return [self.words.get(i, "") for i in items]


class FakeStores:
    def __init__(self) -> None:
        self.vectors = FakeVectors()
        self.queue = SimpleNamespace(pdf_items=lambda user: [], pdf_texts=lambda user: {})


def test_a_mirror_behind_redis_is_rebuilt_before_a_search_and_the_repair_is_reported() -> None:
    stores = FakeStores()
    repairs: list[tuple[str, int, int]] = []
    registry = SpaceRegistry(
        Settings(),
        stores,
        on_repair=lambda *r: repairs.append(r),  # type: ignore[arg-type]
    )
    vecs = vectors(3)
    stores.vectors.put(1, "uploads/u/a.jpg", vecs[0])
    registry.load("u")
    # a commit whose reply was lost: Redis has two more vectors, the mirror never saw them
    stores.vectors.put(2, "uploads/u/b.jpg", vecs[1])
    stores.vectors.put(3, "uploads/u/c.jpg", vecs[2])
    hits = registry.search("u", vecs[2], 1)
    assert [h.item for h in hits] == ["uploads/u/c.jpg"]
    assert repairs == [("u", 1, 3)]
    assert registry.converge_all() == [] and len(repairs) == 1  # in step now: no repair


def test_a_mirror_in_step_with_redis_is_left_alone() -> None:
    stores = FakeStores()
    registry = SpaceRegistry(Settings(), stores)  # type: ignore[arg-type]
    stores.vectors.put(1, "uploads/u/a.jpg", vectors(1)[0])
    space = registry.load("u")
    assert registry.converge_all() == [] and registry.spaces["u"] is space


def test_a_text_query_finds_a_photo_by_its_words_even_far_down_the_clip_ranking() -> None:
    stores = FakeStores()
    registry = SpaceRegistry(Settings(), stores)  # type: ignore[arg-type]
    vecs = vectors(300)
    query = vecs[0]
    far = int(np.argmin(vecs @ query))  # the photo CLIP likes least of all
    for vid in range(300):
        stores.vectors.put(vid + 1, f"uploads/u/{vid}.jpg", vecs[vid])
    stores.vectors.words[f"uploads/u/{far}.jpg"] = "PARKING 5 EUR"
    registry.load("u")

    hits = registry.search("u", query, 3, text="parking 5 eur")

    assert [h.item for h in hits] == [f"uploads/u/{far}.jpg", "uploads/u/0.jpg", hits[2].item]
    assert (hits[0].matched, hits[0].words) == (("text",), ("PARKING", "5", "EUR"))
    assert hits[0].similarity == pytest.approx(float(vecs[far] @ query), abs=1e-5)
    assert hits[1].matched == ("image",) and hits[1].words == ()


def test_new_words_reach_the_words_index_after_a_commit() -> None:
    stores = FakeStores()
    registry = SpaceRegistry(Settings(), stores)  # type: ignore[arg-type]
    vecs = vectors(2)
    stores.vectors.put(1, "uploads/u/a.jpg", vecs[0])
    registry.load("u")
    assert registry.search("u", vecs[0], 2, text="exit")[0].matched == ("image",)
    stores.vectors.put(2, "uploads/u/b.jpg", vecs[1])
    stores.vectors.words["uploads/u/b.jpg"] = "EXIT"
    registry.add(
        "u", {"uploads/u/b.jpg": 2}, {"uploads/u/b.jpg": vecs[1]}, words={"uploads/u/b.jpg"}
    )
    hits = registry.search("u", vecs[0], 1, text="exit")
    assert [(h.item, h.matched) for h in hits] == [("uploads/u/b.jpg", ("text",))]


def test_photos_words_stay_searchable_before_and_after_a_model_switch() -> None:
    """The words are the item's (`ocr:{u}`), not a model's: the switch replaces the active
    space's vectors and deletes the old ones, and the words index answers in the new one."""
    stores = FakeStores()
    registry = SpaceRegistry(Settings(), stores)  # type: ignore[arg-type]
    items = [f"uploads/u/{i}.jpg" for i in range(3)]
    before = vectors(3)
    for vid, item in enumerate(items, 1):
        stores.vectors.put(vid, item, before[vid - 1])
    stores.vectors.words[items[2]] = "EXIT 12"
    hits = registry.search("u", before[0], 1, model="m", text="exit")
    assert [(h.item, h.matched, h.words) for h in hits] == [(items[2], ("text",), ("EXIT",))]

    # the switch: the active space now holds model m2's vectors (new ids), ocr:{u} as it was
    after = vectors(6)[3:]
    stores.vectors.rows.clear()
    stores.vectors.model = "m2"
    for vid, item in enumerate(items, 4):
        stores.vectors.put(vid, item, after[vid - 4])
    with pytest.raises(SpaceSwitched):  # a query encoded with m meets the switch: again
        registry.search("u", before[0], 1, model="m", text="exit")
    hits = registry.search("u", after[0], 1, model="m2", text="exit")
    assert [(h.item, h.matched, h.words) for h in hits] == [(items[2], ("text",), ("EXIT",))]
    assert hits[0].similarity == pytest.approx(float(after[2] @ after[0]), abs=1e-5)


def test_words_committed_with_the_previous_models_vectors_reach_the_words_index() -> None:
    """During an upgrade the active space takes the previous model's vectors of a new photo;
    its words mark the words index stale all the same."""
    stores = FakeStores()
    registry = SpaceRegistry(Settings(), stores)  # type: ignore[arg-type]
    vecs = vectors(2)
    stores.vectors.put(1, "uploads/u/a.jpg", vecs[0])
    assert registry.search("u", vecs[0], 1, model="m", text="exit")[0].matched == ("image",)
    stores.vectors.put(2, "uploads/u/b.jpg", vecs[1])
    stores.vectors.words["uploads/u/b.jpg"] = "EXIT"
    registry.add(
        "u", {"uploads/u/b.jpg": 2}, {"uploads/u/b.jpg": vecs[1]}, "m", words={"uploads/u/b.jpg"}
    )
    hits = registry.search("u", vecs[0], 1, model="m", text="exit")
    assert [(h.item, h.matched) for h in hits] == [("uploads/u/b.jpg", ("text",))]
