"""The reliable queue driven directly against a real redis-server (no Ray)."""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid

import pytest

from lumen.config import Settings
from lumen.storage import Stores
from lumen.storage.queue import NewItem, Usage
from tests.conftest import RedisServer
from tests.support.waiting import wait_until


@pytest.fixture
def stores(redis_server: RedisServer) -> Stores:
    settings = Settings(redis={"url": redis_server.url, "namespace": f"q{uuid.uuid4().hex[:8]}"})
    return Stores(settings)


def _items(user: str, n: int, prefix: str = "img") -> list[NewItem]:
    return [NewItem(f"uploads/{user}/{prefix}{i}.jpg", f"{prefix}-sha-{i}") for i in range(n)]


def _errored(stores: Stores, user: str, items: list[NewItem]) -> list[str]:
    """Enqueue `items` and fail them permanently; returns their names."""
    stores.queue.enqueue(user, items)
    claimed = stores.queue.claim(user, len(items), "w", timeout_s=30)
    stores.queue.fail([(user, i, "broken") for i in claimed], -1)
    return claimed


def test_claim_moves_items_to_processing_with_worker_and_deadline(stores: Stores) -> None:
    stores.queue.enqueue("alice", _items("alice", 3))
    claimed = stores.queue.claim("alice", 2, "w1", timeout_s=30)
    st = stores.queue.status("alice", 100)
    assert claimed == ["uploads/alice/img0.jpg", "uploads/alice/img1.jpg"]
    assert st.queue == 1 and st.queued_items == ["uploads/alice/img2.jpg"]
    assert st.processing_workers == {i: "w1" for i in claimed}
    deadlines = stores.redis.zrange(stores.keys.deadline("alice"), 0, -1, withscores=True)
    assert len(deadlines) == 2 and all(s > time.time() + 20 for _, s in deadlines)


def test_same_content_is_not_queued_twice(stores: Stores) -> None:
    first = stores.queue.enqueue("alice", [NewItem("uploads/alice/a.jpg", "same")])
    again = stores.queue.enqueue("alice", [NewItem("uploads/alice/a_1.jpg", "same")])
    assert first.queued == ["uploads/alice/a.jpg"]
    assert again.queued == [] and again.duplicates == {
        "uploads/alice/a_1.jpg": "uploads/alice/a.jpg"
    }
    other = stores.queue.enqueue("bob", [NewItem("uploads/bob/a.jpg", "same")])
    assert other.queued == ["uploads/bob/a.jpg"]  # dedupe is per user


def test_claim_then_crash_requeues_after_the_deadline_with_a_retry_count(stores: Stores) -> None:
    stores.queue.enqueue("alice", _items("alice", 1))
    [item] = stores.queue.claim("alice", 5, "doomed-worker", timeout_s=30)
    assert stores.queue.requeue_expired(max_retries=3) == []
    [retried] = stores.queue.requeue_expired(max_retries=3, now=time.time() + 60)
    assert (retried.user, retried.item, retried.state) == ("alice", item, "queued")
    st = stores.queue.status("alice", 100)
    assert st.queued_items == [item] and st.processing == [] and st.retries == {item: "1"}
    assert "alice" in stores.queue.active_users()


def test_retry_limit_moves_an_item_to_errors(stores: Stores) -> None:
    stores.queue.enqueue("alice", _items("alice", 1))
    states = []
    for _ in range(3):
        [item] = stores.queue.claim("alice", 1, "w", timeout_s=30)
        later = time.time() + 60
        states += [r.state for r in stores.queue.requeue_expired(max_retries=2, now=later)]
    assert states == ["queued", "queued", "error"]
    st = stores.queue.status("alice", 100)
    assert st.queue == 0 and st.errors == {item: "task timed out"} and st.retries[item] == "3"


def test_commit_is_exactly_once_and_ignores_items_no_longer_processing(stores: Stores) -> None:
    stores.queue.enqueue("alice", _items("alice", 2))
    a, b = stores.queue.claim("alice", 2, "w", timeout_s=30)
    blob = bytes(16)
    first = stores.vectors.commit("alice", "m", 4, [(a, blob, "cap")])
    again = stores.vectors.commit("alice", "m", 4, [(a, blob, "cap")])  # a retry
    assert list(first) == [a] and again == first
    assert (
        stores.vectors.count("alice") == 1 and stores.redis.get(stores.keys.vseq("alice")) == b"1"
    )
    stores.queue.reset("alice")
    assert stores.vectors.commit("alice", "m", 4, [(b, blob, "cap")]) == {}  # reset won
    assert stores.vectors.count("alice") == 0 and stores.queue.done("alice") == []


def test_deleted_item_is_never_claimed_and_other_users_are_untouched(stores: Stores) -> None:
    stores.queue.enqueue("alice", _items("alice", 3))
    stores.queue.enqueue("bob", _items("bob", 1))
    assert stores.queue.delete_queued("alice", "uploads/alice/img1.jpg") == 1
    assert stores.queue.delete_queued("alice", "uploads/bob/img0.jpg") == 0
    claimed = stores.queue.claim("alice", 10, "w", timeout_s=30)
    assert claimed == ["uploads/alice/img0.jpg", "uploads/alice/img2.jpg"]
    assert stores.queue.status("bob", 10).queued_items == ["uploads/bob/img0.jpg"]
    # the deleted image may be uploaded again later
    again = stores.queue.enqueue("alice", [NewItem("uploads/alice/img1b.jpg", "img-sha-1")])
    assert again.queued == ["uploads/alice/img1b.jpg"]


def test_delete_and_reset_under_concurrent_claims_lose_and_resurrect_nothing(
    stores: Stores,
) -> None:
    n = 400
    stores.queue.enqueue("alice", _items("alice", n))
    stores.queue.enqueue("bob", _items("bob", n))
    claimed: list[str] = []
    deleted: list[str] = []
    stop = threading.Event()

    def claimer() -> None:
        while not stop.is_set():
            for user in ("alice", "bob"):
                got = stores.queue.claim(user, 7, "w", timeout_s=30)
                claimed.extend(got)
                stores.vectors.commit(user, "m", 4, [(i, bytes(16), "") for i in got])

    def deleter() -> None:
        for i in range(0, n, 3):
            item = f"uploads/bob/img{i}.jpg"
            if stores.queue.delete_queued("bob", item):
                deleted.append(item)

    threads = [threading.Thread(target=claimer) for _ in range(2)] + [
        threading.Thread(target=deleter)
    ]
    for t in threads:
        t.start()
    wait_until(
        lambda: any(c.startswith("uploads/alice/") for c in claimed),
        30,
        "a claim of alice's items",
        poll_s=0.01,
    )
    stores.queue.reset("alice")
    threads[2].join()
    wait_until(
        lambda: stores.queue.status("bob", 1).queue == 0, 30, "bob's queue to empty", poll_s=0.01
    )
    stop.set()
    for t in threads[:2]:
        t.join()
    # bob: every item is exactly one of deleted or done; none both, none lost
    done_bob = set(stores.queue.done("bob"))
    assert done_bob.isdisjoint(deleted)
    assert len(done_bob) + len(deleted) == n
    assert stores.vectors.count("bob") == len(done_bob)
    assert len([c for c in claimed if c.startswith("uploads/bob/")]) == len(done_bob)
    # alice: nothing survives the reset, and nothing claimed before it came back
    st = stores.queue.status("alice", 10)
    assert st.queue == 0 and st.processing == []
    assert stores.vectors.count("alice") == len(stores.queue.done("alice"))
    assert stores.redis.zcard(stores.keys.deadline("alice")) == 0
    assert stores.redis.zcard(stores.keys.deadline("bob")) == 0


def test_queue_state_survives_a_redis_restart(redis_server: RedisServer, stores: Stores) -> None:
    stores.queue.enqueue("alice", _items("alice", 3))
    [item] = stores.queue.claim("alice", 1, "w", timeout_s=60)
    before = dataclasses.asdict(stores.queue.status("alice", 10))
    redis_server.restart()
    after = dataclasses.asdict(stores.queue.status("alice", 10))
    assert after == before and after["processing"] == [item]


def test_vectors_from_another_model_are_refused_not_mixed(stores: Stores) -> None:
    from lumen.errors import ModelMismatch

    stores.queue.enqueue("alice", _items("alice", 2))
    a, b = stores.queue.claim("alice", 2, "w", timeout_s=30)
    stores.vectors.commit("alice", "model-a", 4, [(a, bytes(16), "")])
    with pytest.raises(ModelMismatch, match="model-a"):
        stores.vectors.commit("alice", "model-b", 8, [(b, bytes(32), "")])
    assert stores.vectors.count("alice") == 1 and stores.queue.done("alice") == [a]
    assert stores.queue.status("alice", 10).processing == [b]  # left for a retry or an error


def test_a_sweep_never_requeues_an_item_claimed_again_since_it_read_the_deadlines(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    stores.queue.enqueue("alice", _items("alice", 1))
    [item] = stores.queue.claim("alice", 1, "w1", timeout_s=-1)  # already overdue
    read_deadlines = stores.redis.zrangebyscore
    raced = []

    def racing(key: str, *args: object, **kwargs: object) -> object:
        due = read_deadlines(key, *args, **kwargs)
        if key == stores.keys.deadline("alice") and not raced:
            raced.append(key)
            # between the sweep's read and its script: the item fails and is claimed afresh
            stores.queue.fail([("alice", item, "transient")], 3)
            stores.queue.claim("alice", 1, "w2", timeout_s=60)
        return due

    monkeypatch.setattr(stores.redis, "zrangebyscore", racing)
    assert stores.queue.requeue_expired(max_retries=3) == []
    assert raced
    st = stores.queue.status("alice", 10)
    assert st.processing_workers == {item: "w2"} and st.queue == 0 and st.retries == {item: "1"}
    # the shard's entry still leads to the new deadline (not dropped by the sweep)
    assert stores.queue.next_deadline() == pytest.approx(time.time() + 60, abs=30)


def test_a_sweep_drops_a_deadline_left_behind_by_an_item_no_longer_processing(
    stores: Stores,
) -> None:
    k = stores.keys
    stores.redis.zadd(k.deadline("alice"), {"uploads/alice/ghost.jpg": 1})
    stores.redis.zadd(k.deadlines(0), {"alice": 1})
    [r] = stores.queue.requeue_expired(max_retries=3)
    assert (r.user, r.item, r.state) == ("alice", "uploads/alice/ghost.jpg", "gone")
    assert stores.redis.zcard(k.deadline("alice")) == 0 and stores.redis.zcard(k.deadlines(0)) == 0
    assert stores.queue.next_deadline() is None


def test_adopt_moves_the_single_redis_layouts_global_keys_and_finds_lost_entries(
    stores: Stores,
) -> None:
    k, r = stores.keys, stores.redis
    stores.queue.enqueue("alice", _items("alice", 2))
    [item] = stores.queue.claim("alice", 1, "w", timeout_s=30)
    # as the old layout left them: one global deadline zset and one global active set
    r.delete(k.deadline("alice"), k.deadlines(0), k.active(0))
    r.zadd(k.legacy_deadline, {f"alice\0{item}": 5})
    r.sadd(k.legacy_active, "alice")
    stores.queue.enqueue("bob", _items("bob", 1))
    r.delete(k.active(0))  # bob's entry lost (a crash between a push and its announcement)
    assert stores.queue.active_users() == [] and stores.queue.next_deadline() is None
    assert stores.queue.adopt() == 2
    assert stores.queue.active_users() == ["alice", "bob"]
    assert stores.queue.next_deadline() == 5
    assert r.exists(k.legacy_deadline) == 0 and r.exists(k.legacy_active) == 0
    [retried] = stores.queue.requeue_expired(max_retries=3)
    assert (retried.user, retried.item, retried.state) == ("alice", item, "queued")


def test_sharded_views_sweep_and_claim_only_their_own_users(redis_server: RedisServer) -> None:
    from lumen.keys import shard_of

    settings = Settings(
        redis={"url": redis_server.url, "namespace": f"q{uuid.uuid4().hex[:8]}"},
        queue={"dispatchers": 3},
    )
    stores = Stores(settings)
    users = [f"user{i}" for i in range(12)]
    for user in users:
        stores.queue.enqueue(user, _items(user, 1))
        stores.queue.claim(user, 1, "w", timeout_s=-1)
    for shard in range(3):
        view = stores.queue.for_shard(shard)
        swept = {r.user for r in view.requeue_expired(max_retries=3)}
        assert swept == {u for u in users if shard_of(u, 3) == shard}
        assert set(view.active_users()) == swept


def test_fail_answers_in_the_order_asked_across_users(stores: Stores) -> None:
    stores.queue.enqueue("alice", _items("alice", 2))
    stores.queue.enqueue("bob", _items("bob", 1))
    a0, a1 = stores.queue.claim("alice", 2, "w", timeout_s=30)
    [b0] = stores.queue.claim("bob", 1, "w", timeout_s=30)
    failures = [("alice", a0, "x"), ("bob", b0, "y"), ("bob", "nope", "z"), ("alice", a1, "w")]
    assert stores.queue.fail(failures, 0) == ["error", "error", "gone", "error"]
    assert stores.queue.status("bob", 10).errors == {b0: "y"}


def test_usage_counts_the_bytes_and_items_of_newly_stored_items_only(stores: Stores) -> None:
    assert stores.queue.usage("alice") == Usage(0, 0)
    stores.queue.enqueue("alice", [NewItem("uploads/alice/a.jpg", "s1", size=1000)])
    stores.queue.enqueue(
        "alice",
        [
            NewItem("uploads/alice/b.jpg", "s2", size=20),
            NewItem("uploads/alice/a_1.jpg", "s1", size=1000),  # a duplicate: not stored
        ],
    )
    stores.queue.enqueue("bob", [NewItem("uploads/bob/a.jpg", "s1", size=7)])
    assert stores.queue.usage("alice") == Usage(1020, 2)
    assert stores.queue.usage("bob") == Usage(7, 1)


def test_deleting_an_item_gives_its_usage_back_and_reset_clears_it(stores: Stores) -> None:
    stores.queue.enqueue(
        "alice",
        [
            NewItem("uploads/alice/a.jpg", "s1", size=1000),
            NewItem("uploads/alice/b.jpg", "s2", size=5),
        ],
    )
    assert stores.queue.delete_queued("alice", "uploads/alice/a.jpg") == 1
    assert stores.queue.usage("alice") == Usage(5, 1)
    stores.queue.reset("alice")
    assert stores.queue.usage("alice") == Usage(0, 0)
    assert stores.redis.exists(stores.keys.usage("alice")) == 0


def test_retry_failed_queues_an_errored_item_again_with_a_fresh_retry_budget(
    stores: Stores,
) -> None:
    [bad, other] = _errored(stores, "alice", _items("alice", 2))
    stores.queue.enqueue("alice", _items("alice", 1, prefix="new"))
    assert stores.queue.retry_failed("alice", bad) is True
    assert stores.queue.retry_failed("alice", bad) is False  # a second call: no longer errored
    assert stores.queue.retry_failed("alice", "uploads/alice/unknown.jpg") is False
    st = stores.queue.status("alice", 10)
    assert st.queued_items == ["uploads/alice/new0.jpg", bad]  # at the back of the queue
    assert st.errors == {other: "broken"} and bad not in st.retries
    assert "alice" in stores.queue.active_users()
    assert stores.queue.claim("alice", 5, "w", timeout_s=30) == ["uploads/alice/new0.jpg", bad]


def test_retry_all_failed_queues_every_errored_item_of_that_user_only(stores: Stores) -> None:
    errored = _errored(stores, "alice", _items("alice", 3))
    [bobs] = _errored(stores, "bob", _items("bob", 1))
    assert sorted(stores.queue.retry_all_failed("alice")) == sorted(errored)
    assert stores.queue.retry_all_failed("alice") == []
    assert stores.queue.status("alice", 10).errors == {}
    assert stores.queue.status("bob", 10).errors == {bobs: "broken"}


def test_uploading_the_bytes_of_an_errored_item_again_requeues_that_item(
    stores: Stores,
) -> None:
    [bad] = _errored(stores, "alice", [NewItem("uploads/alice/a.jpg", "s1", size=50)])
    again = stores.queue.enqueue("alice", [NewItem("uploads/alice/a_1.jpg", "s1", size=50)])
    assert again.queued == [bad]  # under its existing name
    assert again.duplicates == {"uploads/alice/a_1.jpg": bad}  # the new copy is not kept
    st = stores.queue.status("alice", 10)
    assert st.queued_items == [bad] and st.errors == {} and st.retries == {}
    assert stores.queue.usage("alice") == Usage(50, 1)
    # the next upload of those bytes is an ordinary duplicate of the queued item
    third = stores.queue.enqueue("alice", [NewItem("uploads/alice/a_2.jpg", "s1", size=50)])
    assert third.queued == [] and third.duplicates == {"uploads/alice/a_2.jpg": bad}


def test_delete_failed_removes_an_errored_item_and_its_records(stores: Stores) -> None:
    [bad] = _errored(stores, "alice", [NewItem("uploads/alice/a.jpg", "s1", size=50)])
    stores.queue.enqueue("alice", [NewItem("uploads/alice/b.jpg", "s2", size=5)])
    assert stores.queue.delete_failed("alice", "uploads/alice/b.jpg") == 0  # queued, not failed
    assert stores.queue.delete_queued("alice", bad) == 0  # failed, not queued
    assert stores.queue.delete_failed("alice", bad) == 1
    assert stores.queue.state_of("alice", bad) is None
    assert stores.queue.status("alice", 10).errors == {}
    assert stores.queue.usage("alice") == Usage(5, 1)
    # its bytes are new content again
    again = stores.queue.enqueue("alice", [NewItem("uploads/alice/a.jpg", "s1", size=50)])
    assert again.queued == ["uploads/alice/a.jpg"] and again.duplicates == {}


def test_every_user_key_carries_the_user_as_a_cluster_hash_tag(stores: Stores) -> None:
    k = stores.keys
    per_user = [
        *k.user_keys("alice"),
        k.user("alice"),
        k.reply("alice", "t"),
    ]
    assert all("{alice}" in key for key in per_user)
    assert k.queue("alice") == f"{k.ns}:queue:{{alice}}"


def _stale_vseq_once(stores: Stores, monkeypatch: pytest.MonkeyPatch, user: str) -> list[str]:
    """The next read of the user's `vseq` answers 0 (ids issued since the caller looked)."""
    real_get, stale = stores.redis.get, []

    def get(key: str) -> object:
        if key == stores.keys.vseq(user) and not stale:
            stale.append(key)
            return b"0"
        return real_get(key)

    monkeypatch.setattr(stores.redis, "get", get)
    return stale


def test_a_commit_that_needs_an_undeclared_block_changes_nothing_and_is_sent_again(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lumen.storage.vectors import VectorStore

    vectors = VectorStore(stores.redis, stores.keys, per_block=4)
    stores.queue.enqueue("alice", _items("alice", 7))
    first = stores.queue.claim("alice", 5, "w", timeout_s=30)
    vectors.commit("alice", "m", 1, [(i, bytes([n]) * 4, "") for n, i in enumerate(first)])
    rest = stores.queue.claim("alice", 2, "w", timeout_s=30)
    stale = _stale_vseq_once(stores, monkeypatch, "alice")  # would declare block 0 only
    got = vectors.commit("alice", "m", 1, [(i, bytes([9]) * 4, "") for i in rest])
    assert stale and sorted(got.values()) == [6, 7]  # in block 1, declared on the resend
    ids = [i for chunk, _ in vectors.scan("alice") for i in chunk]
    assert ids == [1, 2, 3, 4, 5, 6, 7]


def test_reset_declares_blocks_again_when_ids_moved_on(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    stores.queue.enqueue("alice", _items("alice", 3))
    got = stores.queue.claim("alice", 3, "w", timeout_s=30)
    stores.vectors.commit("alice", "m", 1, [(i, bytes(4), "") for i in got])
    stores.redis.set(stores.keys.vseq("alice"), 5000)  # ids past the first block
    stores.redis.setrange(stores.keys.vblock("alice", 1), 0, b"x")
    stale = _stale_vseq_once(stores, monkeypatch, "alice")
    stores.queue.reset("alice")
    assert stale and stores.redis.exists(*stores.keys.vblocks("alice", 5000)) == 0
    assert stores.vectors.count("alice") == 0


def test_claim_many_claims_each_user_as_claim_does_and_keeps_the_shard_indexes(
    stores: Stores,
) -> None:
    q, k = stores.queue, stores.keys
    q.enqueue("alice", _items("alice", 5))
    q.enqueue("bob", _items("bob", 1))
    q.enqueue("carol", _items("carol", 1))
    q.claim("carol", 1, "w", timeout_s=30)  # carol: active entry kept, nothing queued now
    stores.redis.sadd(k.active(0), "carol")
    got = q.claim_many([("alice", 3), ("bob", 3), ("carol", 2), ("dan", 0)], "w2", 30)
    assert got == [
        [f"uploads/alice/img{i}.jpg" for i in range(3)],
        ["uploads/bob/img0.jpg"],
        [],
        [],
    ]
    assert q.workers_of("alice", got[0]) == dict.fromkeys(got[0], "w2")
    assert q.assign_many({"alice": [got[0][0], "not-claimed"], "bob": got[1], "x": []}, "w3") == {
        "alice": 1,
        "bob": 1,
    }
    assert q.workers_of("alice", got[0]) == {got[0][0]: "w3", got[0][1]: "w2", got[0][2]: "w2"}
    assert q.active_users() == ["alice"]  # bob drained, carol had nothing
    deadlines = dict(stores.redis.zrange(k.deadlines(0), 0, -1, withscores=True))
    assert {u.decode() for u in deadlines} == {"alice", "bob", "carol"}  # carol's item still due
    assert q.depth() == {"queued": 2, "processing": 5}
    assert q.claim_many([("alice", 5)], "w2", 30) == [[f"uploads/alice/img{i}.jpg" for i in (3, 4)]]
    assert q.active_users() == []


def test_claim_many_loads_its_script_again_after_redis_forgot_it(stores: Stores) -> None:
    stores.queue.enqueue("alice", _items("alice", 2))
    stores.queue.enqueue("bob", _items("bob", 2))
    stores.redis.script_flush()  # as a Redis restart does
    got = stores.queue.claim_many([("alice", 1), ("bob", 2)], "w", 30)
    assert got == [["uploads/alice/img0.jpg"], ["uploads/bob/img0.jpg", "uploads/bob/img1.jpg"]]
    assert stores.queue.state_of("bob", "uploads/bob/img1.jpg") == "processing"


def test_commit_many_answers_each_user_on_its_own_and_is_idempotent(stores: Stores) -> None:
    from lumen.errors import ModelMismatch

    q, v = stores.queue, stores.vectors
    for user in ("alice", "bob", "carol"):
        q.enqueue(user, _items(user, 3))
    [b0] = q.claim("bob", 1, "w", timeout_s=30)
    v.commit("bob", "other", 8, [(b0, bytes(32), "")])  # bob's space holds another model
    claimed = {u: q.claim(u, 2, "w", timeout_s=30) for u in ("alice", "bob", "carol")}
    requests = [
        (u, "m", 1, [(i, bytes([n]) * 4, f"cap {n}") for n, i in enumerate(claimed[u])])
        for u in ("alice", "bob", "carol")
    ]
    stores.redis.script_flush()
    first = v.commit_many(requests)
    assert first[0] == {claimed["alice"][0]: 1, claimed["alice"][1]: 2}
    assert isinstance(first[1], ModelMismatch) and "other/8" in first[1].message
    assert first[2] == {claimed["carol"][0]: 1, claimed["carol"][1]: 2}
    again = v.commit_many(requests)  # a resend after a lost reply: the same answers
    assert again[0] == first[0] and again[2] == first[2] and isinstance(again[1], ModelMismatch)
    assert sorted(q.done("alice")) == sorted(claimed["alice"])
    assert q.done("bob") == [b0] and v.describe("carol", [2]) == [(claimed["carol"][1], "cap 1")]
    assert [v.info(u) for u in ("alice", "bob")] == v.infos(["alice", "bob"])


def test_commit_many_sends_a_user_whose_ids_moved_on_again_alone(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lumen.storage.vectors as vectors_module
    from lumen.storage.vectors import VectorStore

    vectors = VectorStore(stores.redis, stores.keys, per_block=4)
    for user in ("alice", "bob"):
        stores.queue.enqueue(user, _items(user, 10))
    first = stores.queue.claim("alice", 5, "w", timeout_s=30)
    vectors.commit("alice", "m", 1, [(i, bytes([n]) * 4, "") for n, i in enumerate(first)])
    rest = stores.queue.claim("alice", 2, "w", timeout_s=30)  # would be ids 6, 7: block 1
    meanwhile = stores.queue.claim("alice", 3, "w", timeout_s=30)
    bobs = stores.queue.claim("bob", 2, "w", timeout_s=30)
    real = vectors_module.run_scripts

    def late(client: object, calls: list[object]) -> list[object]:
        # another commit takes ids 6-8 between the ids read and the scripts
        monkeypatch.setattr(vectors_module, "run_scripts", real)
        vectors.commit("alice", "m", 1, [(i, bytes([7]) * 4, "") for i in meanwhile])
        return real(client, calls)  # type: ignore[arg-type]

    monkeypatch.setattr(vectors_module, "run_scripts", late)
    got = vectors.commit_many(
        [("alice", "m", 1, [(i, bytes([9]) * 4, "") for i in rest]),
         ("bob", "m", 1, [(i, bytes([8]) * 4, "") for i in bobs])]
    )  # fmt: skip
    assert got == [{rest[0]: 9, rest[1]: 10}, {bobs[0]: 1, bobs[1]: 2}]  # 9, 10: in block 2
    ids = [i for chunk, _ in vectors.scan("alice") for i in chunk]
    assert ids == list(range(1, 11))


def test_a_large_commit_stores_every_row_and_a_repeated_row_once(stores: Stores) -> None:
    q, v = stores.queue, stores.vectors
    n = 2_500  # more fields than one variadic command of the script takes
    q.enqueue("alice", _items("alice", n))
    claimed = q.claim("alice", n, "w", timeout_s=30)
    rows = [
        (item, i.to_bytes(4, "little"), f"cap {i}", "EXIT" if i % 2 else "", "")
        for i, item in enumerate(claimed)
    ]
    got = v.commit("alice", "m", 1, [*rows, rows[7]])
    assert got == {item: i + 1 for i, item in enumerate(claimed)}
    assert v.count("alice") == n and stores.redis.get(stores.keys.vseq("alice")) == str(n).encode()
    assert sorted(q.done("alice")) == sorted(claimed)
    assert q.status("alice", 10).processing_workers == {}
    assert v.describe("alice", [1, n]) == [(claimed[0], "cap 0"), (claimed[-1], f"cap {n - 1}")]
    assert v.ocr_words("alice") == {item: "EXIT" for item in claimed[1::2]}
    stored = {}
    for ids, blobs in v.scan("alice"):
        stored.update(zip(ids, blobs, strict=True))
    assert stored == {i + 1: i.to_bytes(4, "little") for i in range(n)}
