"""UserIndex keeps one copy per id, removes for real, and stays accurate after going IVF."""

from __future__ import annotations

import numpy as np
import pytest

from lumen.index import IndexKind, UserIndex, nlist_for
from lumen.vectors import normalize

DIM = 32
THRESHOLD = 2_000
NPROBE = 8


CENTRES = normalize(np.random.default_rng(0).standard_normal((200, DIM)))


def clustered(n: int, *, seed: int = 0) -> np.ndarray:
    """Unit vectors from one fixed Gaussian mixture (clusters, like image embeddings)."""
    rng = np.random.default_rng(seed + 1)
    labels = rng.integers(0, len(CENTRES), n)
    return normalize(CENTRES[labels] + 0.12 * rng.standard_normal((n, DIM)))


def new_index(threshold: int = THRESHOLD) -> UserIndex:
    return UserIndex(DIM, approximate_threshold=threshold, nprobe=NPROBE)


def filled(n: int, threshold: int = THRESHOLD) -> tuple[UserIndex, np.ndarray]:
    vectors = clustered(n)
    index = new_index(threshold)
    index.upsert(np.arange(n), vectors)
    return index, vectors


def hit_ids(index: UserIndex, queries: np.ndarray, k: int) -> list[list[int]]:
    return [[hit.id for hit in hits] for hits in index.search(queries, k)]


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(queries @ vectors.T), axis=1)[:, :k]


def recall_at_k(truth: np.ndarray, found: list[list[int]], k: int) -> float:
    return float(
        np.mean([len(set(t[:k]) & set(f[:k])) / k for t, f in zip(truth, found, strict=True)])
    )


def test_upserting_the_same_ids_twice_never_duplicates() -> None:
    index, vectors = filled(100)

    index.upsert(np.arange(100), vectors)

    assert len(index) == 100
    assert sorted(index.ids().tolist()) == list(range(100))
    assert hit_ids(index, vectors[:1], 2)[0][1] != 0


def test_upsert_replaces_the_vector_of_an_existing_id() -> None:
    index, vectors = filled(100)

    index.upsert(np.array([7]), vectors[50:51])

    hits = index.search(vectors[50], 2)[0]
    assert {hit.id for hit in hits} == {7, 50}
    assert all(hit.score >= 0.99 for hit in hits)
    assert index.search(vectors[7], 1)[0][0].id != 7


def test_fresh_ids_skip_the_removal_scan_and_old_ids_are_still_replaced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    index, vectors = filled(100)
    scans: list[int] = []
    scan = index._remove_present
    monkeypatch.setattr(index, "_remove_present", lambda ids: scans.append(len(ids)) or scan(ids))

    index.upsert(np.arange(100, 110), clustered(10, seed=3))  # ids above every held one
    assert scans == []

    index.remove(np.array([109]))  # the largest id gone: 109 is still not fresh
    scans.clear()
    index.upsert(np.array([5, 109]), vectors[60:62])
    assert scans == [2]
    assert len(index) == 110
    assert {hit.id for hit in index.search(vectors[60], 2)[0]} == {5, 60}


def test_an_id_repeated_in_one_batch_keeps_its_last_vector() -> None:
    vectors = clustered(3)
    index = new_index()

    index.upsert(np.array([1, 1, 2]), vectors)

    ids, stored = index.vectors()
    assert sorted(ids.tolist()) == [1, 2]
    np.testing.assert_allclose(stored[ids.tolist().index(1)], vectors[1], atol=1e-6)


def test_remove_drops_items_for_real() -> None:
    index, vectors = filled(100)

    removed = index.remove(np.array([3, 4, 4, 999]))

    assert removed == 2
    assert len(index) == 98
    assert not index.contains(3)
    assert index.contains(5)
    assert 3 not in hit_ids(index, vectors[3], 100)[0]


def test_search_returns_the_exact_copy_first() -> None:
    index, vectors = filled(500)

    hits = index.search(vectors[:20], 5)

    assert [row[0].id for row in hits] == list(range(20))
    assert all(row[0].score >= 0.99 for row in hits)
    assert all(row[0].score >= row[-1].score for row in hits)


def test_unnormalised_vectors_are_normalised_before_storing() -> None:
    index, vectors = filled(50)

    index.upsert(np.array([0]), vectors[:1] * 10.0)

    assert index.search(vectors[0] * 0.1, 1)[0][0].score == pytest.approx(1.0, abs=1e-4)


def test_an_empty_index_returns_no_hits_for_each_query() -> None:
    index = new_index()

    assert index.search(clustered(3), 10) == [[], [], []]
    assert len(index) == 0
    assert index.ids().size == 0
    assert index.remove(np.array([1])) == 0


def test_k_larger_than_the_index_returns_every_item_once() -> None:
    index, vectors = filled(7)

    assert sorted(hit_ids(index, vectors[0], 50)[0]) == list(range(7))


@pytest.mark.parametrize("width", [DIM - 1, DIM + 1])
def test_a_wrong_dimension_raises_a_value_error_naming_both(width: int) -> None:
    index, _ = filled(10)
    wrong = np.ones((2, width), np.float32)

    with pytest.raises(ValueError, match=f"dimension {width}.*expects {DIM}"):
        index.upsert(np.array([1, 2]), wrong)
    with pytest.raises(ValueError, match=f"dimension {width}.*expects {DIM}"):
        index.search(wrong, 3)


def test_ids_and_vectors_must_pair_up() -> None:
    with pytest.raises(ValueError, match="3 ids for 2 vectors"):
        new_index().upsert(np.arange(3), clustered(2))


def test_negative_and_fractional_ids_are_refused() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        new_index().upsert(np.array([-1]), clustered(1))
    with pytest.raises(ValueError, match="integers"):
        new_index().upsert(np.array([1.5]), clustered(1))


def test_non_finite_vectors_are_refused() -> None:
    vectors = clustered(2)
    vectors[1, 0] = np.nan

    with pytest.raises(ValueError, match="NaN"):
        new_index().upsert(np.arange(2), vectors)


def test_k_must_be_positive() -> None:
    with pytest.raises(ValueError, match="k must be positive"):
        filled(5)[0].search(clustered(1), 0)


def test_index_goes_ivf_past_the_threshold_and_keeps_recall() -> None:
    everything = clustered(6_000)
    index = new_index()
    index.upsert(np.arange(THRESHOLD), everything[:THRESHOLD])
    assert index.kind is IndexKind.FLAT

    index.upsert(np.arange(THRESHOLD, 6_000), everything[THRESHOLD:])
    queries = clustered(200, seed=1)

    assert index.kind is IndexKind.IVF
    assert len(index) == 6_000
    found = hit_ids(index, queries, 10)
    assert recall_at_k(exact_top_k(everything, queries, 10), found, 10) >= 0.95


def test_upsert_and_remove_still_work_after_going_ivf() -> None:
    index, vectors = filled(5_000)
    assert index.kind is IndexKind.IVF

    index.upsert(np.arange(100), vectors[:100])
    index.upsert(np.array([0]), vectors[4_000:4_001])
    removed = index.remove(np.arange(10, 20))

    assert removed == 10
    assert len(index) == 4_990
    assert not index.contains(15)
    assert index.contains(0)
    assert {hit.id for hit in index.search(vectors[4_000], 2)[0]} == {0, 4_000}
    assert 15 not in hit_ids(index, vectors[15], 10)[0]
    assert np.unique(index.ids()).size == 4_990


def test_ivf_lists_every_id_and_vector_it_holds() -> None:
    index, vectors = filled(3_000)

    ids, stored = index.vectors()

    assert index.kind is IndexKind.IVF
    order = np.argsort(ids)
    np.testing.assert_array_equal(ids[order], np.arange(3_000))
    np.testing.assert_allclose(stored[order], vectors, atol=1e-6)


def test_ivf_falls_back_to_flat_when_it_shrinks_to_half_the_threshold() -> None:
    index, vectors = filled(3_000)

    index.remove(np.arange(2_000))

    assert index.kind is IndexKind.FLAT
    assert len(index) == 1_000
    assert hit_ids(index, vectors[2_500], 1)[0] == [2_500]


def test_ivf_keeps_recall_after_growing_well_past_its_training_size() -> None:
    vectors = clustered(12_000)
    index = new_index()
    index.upsert(np.arange(2_500), vectors[:2_500])

    for batch in np.array_split(np.arange(2_500, 12_000), 10):
        index.upsert(batch, vectors[batch])

    queries = clustered(200, seed=2)
    found = hit_ids(index, queries, 10)
    assert recall_at_k(exact_top_k(vectors, queries, 10), found, 10) >= 0.95


def test_build_picks_flat_when_small_and_ivf_when_large() -> None:
    small = UserIndex.build(
        DIM, np.arange(10), clustered(10), approximate_threshold=THRESHOLD, nprobe=NPROBE
    )
    large = UserIndex.build(
        DIM, np.arange(3_000), clustered(3_000), approximate_threshold=THRESHOLD, nprobe=NPROBE
    )

    assert (small.kind, len(small)) == (IndexKind.FLAT, 10)
    assert (large.kind, len(large)) == (IndexKind.IVF, 3_000)


def test_nlist_grows_with_size_but_leaves_enough_points_to_train_each_list() -> None:
    assert nlist_for(10) == 1
    assert nlist_for(2_000) <= 2_000 // 39
    assert nlist_for(1_000_000) == 1_000
    assert nlist_for(10**12) == 16_384
