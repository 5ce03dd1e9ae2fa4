"""Store calls whose reply is lost and which are sent again give the same answer and state.

Each case runs one store operation twice over: once on a plain connection, once through a
proxy that loses the script's reply after Redis has run it, so redis-py sends it again. Both
runs start from the same state in their own namespace; answers and resulting states must be
equal. A real redis-server, no Ray.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from lumen.config import Settings
from lumen.storage import Stores, scripts
from lumen.storage.queue import NewItem
from tests.conftest import RedisServer
from tests.support.lossy_proxy import LossyProxy

USER = "alice"
VEC = bytes(range(16))


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[LossyProxy]:
    p = LossyProxy(redis_server.port)
    yield p
    p.close()


def _stores(url: str) -> Stores:
    stores = Stores(Settings(redis={"url": url, "namespace": f"r{uuid.uuid4().hex[:8]}"}))
    for name in dir(scripts):  # loaded up front: the lost reply is the script's own
        if name.isupper():
            stores.redis.script_load(getattr(scripts, name))
    return stores


@pytest.fixture
def calm(redis_server: RedisServer) -> Stores:
    return _stores(redis_server.url)


@pytest.fixture
def lossy(proxy: LossyProxy) -> Stores:
    return _stores(proxy.url)


def _item(i: int) -> NewItem:
    return NewItem(f"uploads/{USER}/img{i}.jpg", f"sha-{i}", {"kind": "image"}, size=100 + i)


def _name(i: int) -> str:
    return f"uploads/{USER}/img{i}.jpg"


def dump(stores: Stores, user: str = USER) -> dict[str, Any]:
    """Everything the stores keep for `user` (scores and reply keys left out)."""
    r, k = stores.redis, stores.keys
    out: dict[str, Any] = {
        "queue": r.lrange(k.queue(user), 0, -1),
        "done": sorted(r.zrange(k.done(user), 0, -1)),
        "vseq": r.get(k.vseq(user)),
        "deadline": sorted(r.zrange(k.deadline(user), 0, -1)),
        "active": r.sismember(k.active(stores.queue.shard(user)), user),
        "blocks": [r.get(b) for b in k.vblocks(user, int(r.get(k.vseq(user)) or 0))],
    }
    for name in ("processing", "errors", "retries", "meta", "caption", "pdftext", "sha"):
        out[name] = r.hgetall(getattr(k, name)(user))
    for name in ("vec", "vid", "vitem", "vinfo", "usage"):
        out[name] = r.hgetall(getattr(k, name)(user))
    return out


def _queued(s: Stores, n: int = 4) -> None:
    s.queue.enqueue(USER, [_item(i) for i in range(n)])


def _claimed(s: Stores, n: int = 4) -> None:
    _queued(s, n)
    s.queue.claim(USER, n, "w1", timeout_s=60)


def _errored(s: Stores) -> None:
    """img0 and img1 errored, img2 processing, img3 queued."""
    _queued(s, 4)
    s.queue.claim(USER, 3, "w1", timeout_s=60)
    s.queue.fail([(USER, _name(0), "bad"), (USER, _name(1), "worse")], -1)


def _committed(s: Stores) -> None:
    _claimed(s, 2)
    s.vectors.commit(USER, "m", 4, [(_name(0), VEC, "cap")])


Op = Callable[[Stores], Any]
CASES: dict[str, tuple[Callable[[Stores], None], Op]] = {
    "enqueue": (
        _errored,
        lambda s: s.queue.enqueue(
            USER,
            [
                NewItem(_name(9), "sha-9", size=9),  # new content
                NewItem(_name(8), "sha-2", size=8),  # the same bytes as processing img2
                NewItem(_name(7), "sha-0", size=7),  # the same bytes as errored img0
                _item(3),  # an item this store already holds under this name
            ],
        ),
    ),
    "claim": (_queued, lambda s: s.queue.claim(USER, 3, "w2", timeout_s=60)),
    "assign": (_claimed, lambda s: s.queue.assign(USER, [_name(0), _name(9)], "w2")),
    "fail": (
        _claimed,
        lambda s: s.queue.fail(
            [(USER, _name(0), "x"), (USER, _name(1), "y"), (USER, _name(9), "z")], 0
        ),
    ),
    "fail_retry": (_claimed, lambda s: s.queue.fail([(USER, _name(2), "x")], 3)),
    "requeue_expired": (
        _claimed,
        lambda s: [(r.item, r.state) for r in s.queue.requeue_expired(1, now=time.time() + 120)],
    ),
    "retry_failed": (_errored, lambda s: s.queue.retry_failed(USER, _name(1))),
    "retry_all_failed": (_errored, lambda s: s.queue.retry_all_failed(USER)),
    "delete_queued": (_errored, lambda s: s.queue.delete_queued(USER, _name(3))),
    "delete_failed": (_errored, lambda s: s.queue.delete_failed(USER, _name(0))),
    "reset": (_committed, lambda s: s.queue.reset(USER)),
    "commit": (
        _claimed,
        lambda s: s.vectors.commit(USER, "m", 4, [(_name(i), VEC, f"c{i}") for i in (0, 1, 9)]),
    ),
    "commit_after_commit": (
        _committed,
        lambda s: s.vectors.commit(USER, "m", 4, [(_name(i), VEC, "cap") for i in (0, 1)]),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_an_operation_whose_reply_is_lost_answers_and_ends_as_one_that_was_not(
    case: str, calm: Stores, lossy: Stores, proxy: LossyProxy
) -> None:
    setup, op = CASES[case]
    setup(calm)
    setup(lossy)
    assert dump(calm) == dump(lossy)
    expected = op(calm)
    proxy.lose_next_reply()
    got = op(lossy)
    assert proxy.lost == 1  # the script ran, its reply was lost, and the client sent it again
    assert got == expected
    assert dump(lossy) == dump(calm)


def test_a_commit_whose_reply_was_lost_still_names_every_item_for_the_index_mirror(
    lossy: Stores, proxy: LossyProxy
) -> None:
    items = [NewItem(f"uploads/{USER}/c{i}.jpg", f"c-{i}") for i in range(32)]
    lossy.queue.enqueue(USER, items)
    claimed = lossy.queue.claim(USER, 32, "w", timeout_s=60)
    rows = [(item, i.to_bytes(16, "little"), "") for i, item in enumerate(claimed)]
    proxy.lose_next_reply()
    mirror = lossy.vectors.commit(USER, "m", 4, rows)
    assert proxy.lost == 1
    stored = dict(zip(claimed, lossy.vectors.ids_for(USER, claimed), strict=True))
    assert mirror == stored and len(mirror) == 32
    # the dispatcher's own retry (a new call) gets the same answer again
    assert lossy.vectors.commit(USER, "m", 4, rows) == stored
    assert lossy.vectors.count(USER) == 32 and len(lossy.queue.done(USER)) == 32


def test_a_commit_does_not_name_an_item_done_with_other_vector_bytes(calm: Stores) -> None:
    _claimed(calm, 1)
    calm.vectors.commit(USER, "m", 4, [(_name(0), VEC, "")])
    assert calm.vectors.commit(USER, "m", 4, [(_name(0), bytes(16), "")]) == {}


def test_an_enqueue_whose_reply_was_lost_keeps_every_item_queued_once(
    lossy: Stores, proxy: LossyProxy
) -> None:
    items = [_item(i) for i in range(5)]
    proxy.lose_next_reply()
    result = lossy.queue.enqueue(USER, items)
    assert proxy.lost == 1
    assert result.queued == [it.item for it in items] and result.duplicates == {}
    assert lossy.queue.status(USER, 10).queued_items == result.queued
    assert lossy.queue.usage(USER).items == 5


def test_an_enqueue_sent_again_as_a_new_call_calls_its_own_items_queued(calm: Stores) -> None:
    items = [_item(i) for i in range(3)]
    first = calm.queue.enqueue(USER, items)
    again = calm.queue.enqueue(USER, items)
    assert again == first and again.duplicates == {}
    usage = calm.queue.usage(USER)
    assert calm.queue.status(USER, 10).queue == 3
    assert (usage.items, usage.bytes) == (3, 100 + 101 + 102)


def test_a_claim_whose_reply_was_lost_hands_out_the_same_items_and_no_more(
    lossy: Stores, proxy: LossyProxy
) -> None:
    _queued(lossy, 6)
    proxy.lose_next_reply()
    claimed = lossy.queue.claim(USER, 2, "w", timeout_s=60)
    assert proxy.lost == 1
    assert claimed == [_name(0), _name(1)]
    assert lossy.queue.status(USER, 10).queue == 4


def test_a_second_reset_changes_nothing(calm: Stores) -> None:
    _committed(calm)
    calm.queue.reset(USER)
    once = dump(calm)
    calm.queue.reset(USER)
    assert dump(calm) == once
    assert not any(once[k] for k in ("queue", "done", "processing", "vec", "usage", "sha"))
