"""Model upgrades in Redis (no Ray): the NEXT space, the remaining set and the atomic switch,
against a real redis-server."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from lumen.config import Settings
from lumen.errors import ModelMismatch, SpaceSwitched
from lumen.keys import NEXT, OLD
from lumen.spaces import SpaceRegistry
from lumen.storage import Stores
from lumen.storage.queue import NewItem
from lumen.upgrade import Vectors, commit_versions
from lumen.vectors import encode_vector, normalize
from tests.conftest import RedisServer

A, B = "model-a", "model-b"
DA, DB = 4, 3


@pytest.fixture
def stores(redis_server: RedisServer) -> Stores:
    settings = Settings(redis={"url": redis_server.url, "namespace": f"s{uuid.uuid4().hex[:8]}"})
    return Stores(settings)


def _vec(seed: int, dim: int) -> bytes:
    return encode_vector(np.random.default_rng(seed).standard_normal(dim).astype(np.float32))


def _done_with_a(stores: Stores, user: str, n: int, start: int = 0) -> list[str]:
    """`n` items uploaded and committed with model A (the active space)."""
    items = [NewItem(f"uploads/{user}/i{start + j}.jpg", f"sha-{start + j}") for j in range(n)]
    stores.queue.enqueue(user, items)
    got = stores.queue.claim(user, n, "w", timeout_s=30)
    stores.vectors.commit(user, A, DA, [(i, _vec(j, DA), "a") for j, i in enumerate(got)])
    return got


def test_the_remaining_set_is_the_done_items_without_a_next_vector(stores: Stores) -> None:
    items = _done_with_a(stores, "al", 5)
    sp = stores.spaces
    assert sp.remaining("al") == items
    sp.write("al", B, DB, [(i, _vec(9, DB), "") for i in items[:2]])
    assert sp.remaining("al") == items[2:]
    sp.write("al", B, DB, [(i, _vec(9, DB), "") for i in items[:3]])  # again: same ids
    assert sp.remaining("al") == items[3:]
    assert sp.count("al") == 3 and sp.ids("al") == [1, 2, 3]


def test_writes_to_next_take_only_done_or_processing_items_of_a_space_on_another_model(
    stores: Stores,
) -> None:
    sp = stores.spaces
    assert sp.write("nobody", B, DB, [("uploads/nobody/x.jpg", _vec(1, DB), "")]) == {}
    _done_with_a(stores, "al", 2)
    assert sp.write("al", A, DA, [("uploads/al/i0.jpg", _vec(1, DA), "")]) == {}  # same model
    assert sp.write("al", B, DB, [("uploads/al/unknown.jpg", _vec(1, DB), "")]) == {}
    stores.queue.enqueue("al", [NewItem("uploads/al/live.jpg", "sha-live")])
    stores.queue.claim("al", 1, "w", timeout_s=30)
    assert sp.write("al", B, DB, [("uploads/al/live.jpg", _vec(1, DB), "")]) == {
        "uploads/al/live.jpg": 1
    }
    with pytest.raises(ModelMismatch):
        sp.write("al", "model-c", DB, [("uploads/al/i0.jpg", _vec(1, DB), "")])


def test_the_switch_waits_for_every_done_item_then_swaps_atomically(stores: Stores) -> None:
    items = _done_with_a(stores, "al", 4)
    sp, k = stores.spaces, stores.keys
    assert sp.switch("al", B).reason == "no_space"
    sp.write("al", B, DB, [(i, _vec(7, DB), "") for i in items[:3]])
    refused = sp.switch("al", B)
    assert not refused.switched and refused.missing == 1
    assert stores.vectors.info("al").model == A  # nothing changed
    sp.write("al", B, DB, [(items[3], _vec(8, DB), "")])
    done = sp.switch("al", B)
    assert done.switched and done.count == 4
    info = stores.vectors.info("al")
    assert (info.model, info.dim) == (B, DB)
    assert stores.vectors.count("al") == 4
    ids, blobs = [], []
    for chunk_ids, chunk in stores.vectors.scan("al"):
        ids += chunk_ids
        blobs += chunk
    assert sorted(ids) == [1, 2, 3, 4] and all(len(b) == 4 * DB for b in blobs)
    assert blobs[ids.index(4)] == _vec(8, DB)
    assert stores.redis.exists(k.vinfo("al", NEXT), k.vid("al", NEXT), k.vblock("al", 0, NEXT)) == 0
    assert stores.redis.exists(k.vinfo("al", OLD)) == 0  # not kept by default
    assert sp.remaining("al") == items  # a NEXT space no longer exists: nothing in it


def test_the_old_space_is_kept_when_asked_and_reset_clears_every_space(stores: Stores) -> None:
    items = _done_with_a(stores, "al", 3)
    sp, k = stores.spaces, stores.keys
    sp.write("al", B, DB, [(i, _vec(7, DB), "") for i in items])
    assert sp.switch("al", B, keep_old=True).switched
    assert sp.info("al", OLD).model == A and sp.count("al", OLD) == 3
    stores.queue.reset("al")
    left = {key.decode() for key in stores.redis.keys(f"{k.ns}:*{{al}}*")}
    # only the id sequence (kept by reset) and remembered replies (they expire) stay
    assert {key for key in left if ":reply:" not in key} == {k.vseq("al")}


def test_users_on_other_models_are_found_by_one_scan(stores: Stores) -> None:
    _done_with_a(stores, "al", 1)
    _done_with_a(stores, "bo", 1)
    sp = stores.spaces
    assert sorted(sp.users_on_other_models(B)) == ["al", "bo"]
    assert list(sp.users_on_other_models(A)) == []


@pytest.mark.parametrize("keep_old", [False, True], ids=["old-deleted", "old-kept-then-dropped"])
def test_a_photos_words_answer_before_during_and_after_the_switch(
    stores: Stores, keep_old: bool
) -> None:
    """Words OCR read are the item's (`ocr:{u}`), not a space's: a photo uploaded during an
    upgrade is found by its words in the previous model's space, and in the new one after
    the switch, once the old space is gone."""
    done = _done_with_a(stores, "al", 3)
    sign = "uploads/al/sign.jpg"
    stores.queue.enqueue("al", [NewItem(sign, "sha-sign")])
    stores.queue.claim("al", 1, "w", timeout_s=30)
    # embedded with both models, its words read once: each version carries them
    deployed = Vectors(B, DB, [(sign, _vec(50, DB), "", "EXIT 12", "")])
    previous = Vectors(A, DA, [(sign, _vec(50, DA), "", "EXIT 12", "")])
    used, committed = commit_versions(stores.vectors, stores.spaces, "al", deployed, previous)
    assert used is previous and sign in committed and sign in stores.spaces.items("al")
    assert stores.vectors.ocr_words("al") == {sign: "EXIT 12"}
    registry = SpaceRegistry(Settings(), stores)

    def query(seed: int, dim: int) -> np.ndarray:
        return normalize(np.random.default_rng(seed).standard_normal((1, dim)))[0]

    during = registry.search("al", query(1, DA), 1, A, text="exit")
    assert [(h.item, h.matched, h.words) for h in during] == [(sign, ("text",), ("EXIT",))]

    stores.spaces.write("al", B, DB, [(i, _vec(60 + j, DB), "") for j, i in enumerate(done)])
    assert stores.spaces.switch("al", B, keep_old=keep_old).switched
    if keep_old:
        stores.spaces.drop("al", OLD)
    k = stores.keys
    assert stores.redis.exists(k.vinfo("al", OLD), k.vid("al", OLD), k.vblock("al", 0, OLD)) == 0
    assert stores.vectors.ocr_words("al") == {sign: "EXIT 12"}
    with pytest.raises(SpaceSwitched):  # a query of the old model meets the switch
        registry.search("al", query(1, DA), 1, A, text="exit")
    after = registry.search("al", query(2, DB), 1, B, text="exit")
    assert [(h.item, h.matched, h.words) for h in after] == [(sign, ("text",), ("EXIT",))]
    assert stores.vectors.info("al").model == B
