"""IndexShards on real Ray: an evicted space searches the same, from its snapshot or from
Redis; a user re-hashed to another shard count finds the same on their new shard; operators
see every shard's memory."""

from __future__ import annotations

from typing import Any

import pytest
import ray

from actors.index_shard import get_index_shard
from actors.naming import shard_for
from lumen.snapshots import SnapshotStore
from lumen.storage import Stores
from tests.conftest import Service, admin_headers
from tests.support.hostile import make_zip, noisy_jpegs
from tests.support.http import search, upload_zip, wait_settled

IMAGES = 6


def _user_with_images(service: Service, prefix: str, seed: int) -> tuple[str, dict[str, str]]:
    user, h = service.new_user(prefix)
    body = upload_zip(service, h, make_zip(noisy_jpegs(IMAGES, side=96, seed=seed))).json()
    assert len(body["queued"]) == IMAGES
    wait_settled(service, h, IMAGES)
    return user, h


def _results(service: Service, h: dict[str, str], image: bytes) -> list[tuple[str, float, str]]:
    r = search(service, h, image=image, top_k=IMAGES)
    assert r.status_code == 200, r.text
    # image_url carries an expiry, so it differs between two searches by design
    return [(x["filename"], x["similarity"], x["caption"]) for x in r.json()["results"]]


def _stats(shard: Any) -> dict[str, Any]:
    return dict(ray.get(shard.stats.remote(100), timeout=60))


def _loaded(shard: Any, user: str) -> bool:
    return any(u["user"] == user for u in _stats(shard)["users"])


def test_an_evicted_space_gives_identical_results_from_its_snapshot_and_from_redis(
    service: Service,
) -> None:
    user, h = _user_with_images(service, "evict", seed=3)
    query = noisy_jpegs(1, side=96, seed=3)["img_00000.jpg"]  # an uploaded image
    settings = service.settings
    shard = get_index_shard(settings, shard_for(user, settings.queue.index_shards))
    first = _results(service, h, query)
    assert len(first) == IMAGES and first[0][1] > 0.99
    assert _loaded(shard, user)

    # 1. evicted with a snapshot: it comes back from the snapshot
    assert ray.get(shard.snapshot.remote(user), timeout=60)
    before = _stats(shard)
    assert ray.get(shard.evict.remote(user), timeout=60)
    assert not _loaded(shard, user)
    assert _results(service, h, query) == first
    after = _stats(shard)
    assert after["loads"]["snapshot"] == before["loads"]["snapshot"] + 1
    assert after["evictions"] == before["evictions"] + 1

    # 2. evicted, snapshot gone: rebuilt from Redis
    snapshots = SnapshotStore(settings.data_dir / "snapshots", settings.redis.namespace)
    assert ray.get(shard.evict.remote(user), timeout=60)
    snapshots.remove(user)
    assert _results(service, h, query) == first
    assert _stats(shard)["loads"]["redis"] == after["loads"]["redis"] + 1

    # 3. evicted, snapshot damaged: refused, rebuilt from Redis
    assert ray.get(shard.snapshot.remote(user), timeout=60)
    [path] = list(snapshots.user_dir(user).iterdir())
    assert ray.get(shard.evict.remote(user), timeout=60)
    path.write_bytes(path.read_bytes()[:-100])
    assert _results(service, h, query) == first
    final = _stats(shard)
    assert final["snapshot_rejects"].get("corrupt", 0) >= 1
    assert final["loads"]["redis"] == after["loads"]["redis"] + 2

    # a reset removes the snapshot with the space
    assert ray.get(shard.snapshot.remote(user), timeout=60)
    with service.client() as c:
        assert c.post("/reset", headers=h).status_code == 200
    assert not snapshots.user_dir(user).exists()


def test_a_user_rehashed_to_more_shards_finds_the_same_on_the_new_shard(service: Service) -> None:
    settings = service.settings
    old_count = settings.queue.index_shards
    new_count = old_count + 1
    moved = settings.model_copy(
        update={"queue": settings.queue.model_copy(update={"index_shards": new_count})}
    )
    for seed in range(20):  # a user whose shard changes with the count
        user, h = _user_with_images(service, "rehash", seed=100 + seed)
        if shard_for(user, new_count) != shard_for(user, old_count):
            break
    else:
        pytest.fail("no user moved shards in 20 tries")
    old = get_index_shard(settings, shard_for(user, old_count))
    new = get_index_shard(moved, shard_for(user, new_count))
    _, blobs = next(Stores(settings).vectors.scan(user))
    query = blobs[0]  # one of the user's own vectors
    expected = ray.get(old.search.remote(user, query, IMAGES), timeout=60)
    assert len(expected) == IMAGES
    assert ray.get(old.snapshot.remote(user), timeout=60)

    # the old shard learns the new count and lets the user go
    ray.get(old.converge.remote(new_count), timeout=60)
    assert not _loaded(old, user)
    # the new shard loads the user from the snapshot and finds exactly the same
    loads = _stats(new)["loads"]["snapshot"]
    assert ray.get(new.search.remote(user, query, IMAGES), timeout=60) == expected
    assert _stats(new)["loads"]["snapshot"] == loads + 1
    ray.get(old.converge.remote(old_count), timeout=60)  # back to the service's count


def test_operators_see_each_shard_and_plain_users_do_not(service: Service) -> None:
    user, h = _user_with_images(service, "view", seed=7)
    assert _results(service, h, noisy_jpegs(1, side=96, seed=7)["img_00000.jpg"])
    with service.client() as c:
        assert c.get("/monitor/shards", headers=h).status_code == 403
        r = c.get("/monitor/shards", headers=admin_headers(service))
    assert r.status_code == 200, r.text
    shards = r.json()["shards"]
    assert [s["shard"] for s in shards] == list(range(service.settings.queue.index_shards))
    mine = shards[shard_for(user, service.settings.queue.index_shards)]
    assert mine["budget_bytes"] == service.settings.index.shard_memory_bytes
    assert 0 < mine["bytes"] <= mine["budget_bytes"] and mine["spaces"] >= 1
    entry = next(u for u in mine["users"] if u["user"] == user)
    assert entry["vectors"] == IMAGES and entry["bytes"] > 0
    assert {"node", "node_id", "pid", "evictions", "loads"} <= set(mine)
