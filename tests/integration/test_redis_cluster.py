"""The stores and the whole service on a real 3-primary Redis Cluster (no CROSSSLOT anywhere).

The store tests drive every queue and vector script for users whose keys land on different
nodes. The service test swaps the session's app for one on the cluster (its own app name, so
its own dispatcher and index shards), runs upload -> done -> /search, then puts the session's
app back.
"""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Iterator

import numpy as np
import pytest

from lumen.config import Settings
from lumen.keys import shard_of
from lumen.storage import Stores
from lumen.storage.queue import NewItem
from lumen.vectors import encode_vector
from tests.conftest import ROOT, Service, service_settings
from tests.support.chaos import kill_app_actors
from tests.support.fake_gemini import FakeGemini
from tests.support.hostile import make_zip
from tests.support.http import search, upload_zip, wait_healthy, wait_settled
from tests.support.redis_cluster import RedisCluster, redis_cluster
from tests.support.tiny_clip import COLORS, SHAPES, TinyClip, draw_shape

USERS = ["alice", "bob", "carol", "dave", "erin", "frank"]
DIM = 8


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    with redis_cluster(tmp_path_factory.mktemp("redis-cluster")) as c:
        yield c


@pytest.fixture
def stores(cluster: RedisCluster) -> Stores:
    settings = Settings(
        redis={"url": cluster.url, "namespace": f"c{uuid.uuid4().hex[:6]}"},
        queue={"dispatchers": 2},
    )
    return Stores(settings)


def _items(user: str, n: int, prefix: str = "img") -> list[NewItem]:
    return [
        NewItem(f"uploads/{user}/{prefix}{i}.jpg", f"{user}-{prefix}-{i}", size=10)
        for i in range(n)
    ]


def _vec(seed: int) -> bytes:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return encode_vector(v / np.linalg.norm(v))


def _node_of(stores: Stores, key: str) -> str:
    node = stores.redis.get_node_from_key(key)  # type: ignore[union-attr]
    return f"{node.host}:{node.port}"


def test_the_client_is_a_cluster_client_and_users_land_on_different_nodes(
    stores: Stores,
) -> None:
    from redis.cluster import RedisCluster as ClusterClient

    assert isinstance(stores.redis, ClusterClient)
    nodes = {_node_of(stores, stores.keys.queue(u)) for u in USERS}
    assert len(nodes) >= 2, nodes
    for user in USERS:  # every key of one user: one slot
        keys = [*stores.keys.user_keys(user), stores.keys.vblock(user, 3), stores.keys.vseq(user)]
        assert len({stores.redis.keyslot(k) for k in keys}) == 1  # type: ignore[union-attr]


def test_every_queue_and_vector_script_runs_on_the_cluster(stores: Stores) -> None:
    q, v = stores.queue, stores.vectors
    for n, user in enumerate(USERS):
        assert q.enqueue(user, _items(user, 6)).queued == [i.item for i in _items(user, 6)]
        a, b, c, d = q.claim(user, 4, "w1", timeout_s=30)
        assert q.assign(user, [a, b], "w2") == 2
        assert q.workers_of(user, [a, c]) == {a: "w2", c: "w1"}
        committed = v.commit(user, "m", DIM, [(a, _vec(n), "a cap"), (b, _vec(n + 100), "")])
        assert sorted(committed) == [a, b]
        assert v.commit(user, "m", DIM, [(a, _vec(n), "a cap")]) == {a: committed[a]}
        assert q.fail([(user, c, "transient")], 3) == ["queued"]
        assert q.fail([(user, d, "broken")], -1) == ["error"]
        assert q.retry_failed(user, d) is True
        [again] = q.claim(user, 1, "w1", timeout_s=30)  # c comes back first (LPUSH)
        assert again == c
        assert q.fail([(user, again, "broken")], -1) == ["error"]
        assert q.retry_all_failed(user) == [c]
        assert q.delete_queued(user, f"uploads/{user}/img4.jpg") == 1
        assert sorted(q.status(user, 100).done) == sorted([a, b])
        assert q.state_of(user, a) == "done"
        assert v.count(user) == 2 and v.info(user) is not None
        assert v.describe(user, [committed[a]]) == [(a, "a cap")]
        [(ids, blobs)] = list(v.scan(user))
        assert sorted(ids) == sorted(committed.values())
        assert blobs[ids.index(committed[a])] == _vec(n)
    assert set(q.active_users()) == set(USERS)
    depth = q.depth()
    assert depth["queued"] == 3 * len(USERS) and depth["processing"] == 0


def test_claims_and_commits_of_many_users_go_together_to_every_node(stores: Stores) -> None:
    """`claim_many` and `commit_many` pipeline per node: users on different nodes, and
    scripts the nodes forgot (as after a restart) are loaded again."""
    from lumen.errors import ModelMismatch

    q, v = stores.queue, stores.vectors
    for user in USERS:
        q.enqueue(user, _items(user, 3))
    stores.redis.script_flush()  # every primary
    got = q.claim_many([(u, 2) for u in USERS], "w", 30)
    assert got == [[i.item for i in _items(u, 2)] for u in USERS]
    assert q.assign_many(dict(zip(USERS, got, strict=True)), "w2") == dict.fromkeys(USERS, 2)
    assert q.workers_of("alice", got[0]) == dict.fromkeys(got[0], "w2")
    [odd] = q.claim("frank", 1, "w", timeout_s=30)
    v.commit("frank", "other", DIM, [(odd, _vec(0), "")])
    stores.redis.script_flush()  # every primary
    requests = [
        (u, "m", DIM, [(item, _vec(n * 10 + j), f"c{j}") for j, item in enumerate(items)])
        for n, (u, items) in enumerate(zip(USERS, got, strict=True))
    ]
    first = v.commit_many(requests)
    assert v.commit_many(requests)[:-1] == first[:-1]  # idempotent
    for user, items, answer in zip(USERS[:-1], got[:-1], first[:-1], strict=True):
        assert answer == {items[0]: 1, items[1]: 2}
        assert sorted(q.done(user)) == sorted(items)
    assert isinstance(first[-1], ModelMismatch)
    assert q.active_users() == sorted(USERS[:-1])  # a third item each; frank drained
    assert q.next_deadline() is not None  # frank's two items are still processing
    assert q.depth() == {"queued": 5, "processing": 2}


def test_a_missed_deadline_is_requeued_by_the_users_dispatcher_shard(stores: Stores) -> None:
    q = stores.queue
    for user in USERS:
        q.enqueue(user, _items(user, 2))
        q.claim(user, 2, "w", timeout_s=-1)  # already overdue
    assert q.next_deadline() is not None and q.next_deadline() <= time.time()  # type: ignore[operator]
    swept: dict[int, set[str]] = {}
    for shard in range(2):
        view = q.for_shard(shard)
        swept[shard] = {r.user for r in view.requeue_expired(3) if r.state == "queued"}
        assert swept[shard] == {u for u in USERS if shard_of(u, 2) == shard}
    assert swept[0] and swept[1]  # both shards had users
    assert q.next_deadline() is None
    for user in USERS:
        assert q.status(user, 10).retries == {i.item: "1" for i in _items(user, 2)}


def test_reset_clears_every_key_of_one_user_only_including_vector_blocks(
    stores: Stores,
) -> None:
    q, v, k = stores.queue, stores.vectors, stores.keys
    for n, user in enumerate(USERS[:3]):
        q.enqueue(user, _items(user, 3))
        got = q.claim(user, 3, "w", timeout_s=30)
        v.commit(user, "m", DIM, [(i, _vec(n * 10 + j), "") for j, i in enumerate(got)])
    q.reset("alice")
    assert v.count("alice") == 0 and q.status("alice", 10).done == []
    assert stores.redis.exists(*k.vblocks("alice", 3)) == 0
    assert v.count("bob") == 3 and v.count("carol") == 3
    # ids are never reused after a reset; the new vector is readable
    q.enqueue("alice", _items("alice", 1, prefix="new"))
    [item] = q.claim("alice", 1, "w", timeout_s=30)
    assert v.commit("alice", "m", DIM, [(item, _vec(99), "")]) == {item: 4}
    assert list(v.scan("alice")) == [([4], [_vec(99)])]


def test_commits_across_a_block_boundary_and_legacy_vectors_load(stores: Stores) -> None:
    from lumen.storage.vectors import VectorStore

    v = VectorStore(stores.redis, stores.keys, per_block=4)  # tiny blocks: many boundaries
    q, k = stores.queue, stores.keys
    user = "erin"
    # vectors of the older layout: a hash of id -> bytes, with their id maps
    legacy = {i: _vec(500 + i) for i in (1, 2, 3)}
    stores.redis.hset(k.vec(user), mapping={str(i): b for i, b in legacy.items()})
    stores.redis.hset(k.vitem(user), mapping={str(i): f"old{i}" for i in legacy})
    stores.redis.hset(k.vinfo(user), mapping={"model": "m", "dim": DIM})
    stores.redis.set(k.vseq(user), 3)
    q.enqueue(user, _items(user, 7))
    got = q.claim(user, 7, "w", timeout_s=30)
    committed = v.commit(user, "m", DIM, [(i, _vec(j), "") for j, i in enumerate(got)])
    assert sorted(committed.values()) == list(range(4, 11))  # blocks 1, 2
    ids, blobs = [], []
    for chunk_ids, chunk in v.scan(user):
        ids += chunk_ids
        blobs += chunk
    assert stores.redis.exists(k.vec(user)) == 0  # moved into blocks on load
    expect = {**legacy, **{committed[i]: _vec(j) for j, i in enumerate(got)}}
    assert dict(zip(ids, blobs, strict=True)) == expect


@pytest.fixture(scope="module")
def cluster_service(
    service: Service,
    cluster: RedisCluster,
    tiny_clip: TinyClip,
    gemini: FakeGemini,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Service]:
    """The session's app swapped for one on the cluster (own name: own actors), then back."""
    from ray import serve

    from deploy import deploy, load_config

    app = "lumen-cluster"
    overrides = service_settings(
        tmp_path_factory.mktemp("cluster-data"), cluster.url, tiny_clip, gemini
    )
    overrides["app_name"] = app
    config = load_config(ROOT / "configs" / "local.yaml", overrides)
    config["http_options"] = service.config["http_options"]
    config["applications"][0]["name"] = app
    settings = Settings(**overrides)
    serve.delete(service.config["applications"][0]["name"])
    try:
        deploy(config)
        wait_healthy(service.url)
        yield Service(service.url, settings, service.redis, config)
    finally:
        serve.delete(app)
        kill_app_actors(settings)
        deploy(service.config)
        wait_healthy(service.url)


def _png(color: str, shape: str) -> bytes:
    buf = io.BytesIO()
    draw_shape(color, shape, size=160, seed=3).save(buf, format="PNG")
    return buf.getvalue()


def test_upload_to_search_round_trip_on_the_cluster(
    cluster_service: Service, cluster: RedisCluster
) -> None:
    svc = cluster_service
    user, h = svc.new_user("cl")
    members = {f"{c}_{s}.png": _png(c, s) for c in list(COLORS)[:2] for s in list(SHAPES)[:2]}
    body = upload_zip(svc, h, make_zip(members)).json()
    assert len(body["queued"]) == len(members)
    final = wait_settled(svc, h, len(members))
    assert len(final["done"]) == len(members) and not final["errors"]
    color, shape = list(COLORS)[0], list(SHAPES)[0]
    r = search(svc, h, image=_png(color, shape), top_k=2)
    assert r.status_code == 200, r.text
    top = r.json()["results"][0]
    assert top["filename"].endswith(f"{color}_{shape}.png") and top["similarity"] >= 0.99
    # the data really is on the cluster: the user's vectors sit in a block there
    stores = Stores(svc.settings)
    assert stores.vectors.count(user) == len(members)
    assert stores.redis.exists(stores.keys.vblock(user, 0)) == 1
