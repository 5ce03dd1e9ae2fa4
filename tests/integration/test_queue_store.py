"""The reliable queue driven directly against a real redis-server (no Ray)."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from lumen.config import Settings
from lumen.storage import Stores
from lumen.storage.queue import NewItem
from tests.conftest import RedisServer


@pytest.fixture
def stores(redis_server: RedisServer) -> Stores:
    settings = Settings(redis={"url": redis_server.url, "namespace": f"q{uuid.uuid4().hex[:8]}"})
    return Stores(settings)


def _items(user: str, n: int, prefix: str = "img") -> list[NewItem]:
    return [NewItem(f"uploads/{user}/{prefix}{i}.jpg", f"{prefix}-sha-{i}") for i in range(n)]


def test_claim_moves_items_to_processing_with_worker_and_deadline(stores: Stores) -> None:
    stores.queue.enqueue("alice", _items("alice", 3))
    claimed = stores.queue.claim("alice", 2, "w1", timeout_s=30)
    st = stores.queue.status("alice", 100)
    assert claimed == ["uploads/alice/img0.jpg", "uploads/alice/img1.jpg"]
    assert st.queue == 1 and st.queued_items == ["uploads/alice/img2.jpg"]
    assert st.processing_workers == {i: "w1" for i in claimed}
    deadlines = stores.redis.zrange(stores.keys.deadline, 0, -1, withscores=True)
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
    [item] = stores.queue.claim("alice", 5, "doomed-worker", timeout_s=0.2)
    assert stores.queue.requeue_expired(max_retries=3) == []
    time.sleep(0.3)
    [retried] = stores.queue.requeue_expired(max_retries=3)
    assert (retried.user, retried.item, retried.state) == ("alice", item, "queued")
    st = stores.queue.status("alice", 100)
    assert st.queued_items == [item] and st.processing == [] and st.retries == {item: "1"}
    assert "alice" in stores.queue.active_users()


def test_retry_limit_moves_an_item_to_errors(stores: Stores) -> None:
    stores.queue.enqueue("alice", _items("alice", 1))
    states = []
    for _ in range(3):
        [item] = stores.queue.claim("alice", 1, "w", timeout_s=0.05)
        time.sleep(0.1)
        states += [r.state for r in stores.queue.requeue_expired(max_retries=2)]
    assert states == ["queued", "queued", "error"]
    st = stores.queue.status("alice", 100)
    assert st.queue == 0 and st.errors == {item: "task timed out"} and st.retries[item] == "3"


def test_commit_is_exactly_once_and_ignores_items_no_longer_processing(stores: Stores) -> None:
    stores.queue.enqueue("alice", _items("alice", 2))
    a, b = stores.queue.claim("alice", 2, "w", timeout_s=30)
    blob = bytes(16)
    first = stores.vectors.commit("alice", "m", 4, [(a, blob, "cap")])
    again = stores.vectors.commit("alice", "m", 4, [(a, blob, "cap")])  # a retry
    assert list(first) == [a] and again == {}
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
    time.sleep(0.05)
    stores.queue.reset("alice")
    threads[2].join()
    time.sleep(0.2)
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
    assert stores.redis.zcard(stores.keys.deadline) == 0


def test_queue_state_survives_a_redis_restart(redis_server: RedisServer, stores: Stores) -> None:
    stores.queue.enqueue("alice", _items("alice", 3))
    [item] = stores.queue.claim("alice", 1, "w", timeout_s=60)
    before = stores.queue.status("alice", 10).as_dict()
    redis_server.restart()
    after = stores.queue.status("alice", 10).as_dict()
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
