"""The dispatcher's decisions, through fakes of its queue, embedder and index."""

from __future__ import annotations

import asyncio

import pytest

from lumen.config import QueueSettings
from lumen.dispatch import DispatchCore, Pacing, RoundRobin, WorkerDied, pace, pack, split
from lumen.worker import EmbedResult
from tests.support.dispatch_fakes import (
    FakeEmbed,
    FakeEvents,
    FakeIndex,
    FakeMetrics,
    FakeQueue,
    broken,
    ok,
)
from tests.support.waiting import wait_until_async


def make_core(
    embed: FakeEmbed | None = None, max_retries: int = 2, batch: int = 4, inflight: int = 2
) -> tuple[DispatchCore, FakeQueue, FakeEvents, FakeIndex, FakeMetrics]:
    queue, events, metrics = FakeQueue(), FakeEvents(), FakeMetrics()
    index = FakeIndex(queue)
    settings = QueueSettings(
        max_retries=max_retries, dispatch_batch_size=batch, max_inflight_batches=inflight
    )
    core = DispatchCore(settings, queue, events, embed or FakeEmbed(), index, metrics)
    return core, queue, events, index, metrics


async def settle(core: DispatchCore) -> None:
    """Run rounds until nothing is queued or in flight."""
    for _ in range(100):
        await core.round()
        await core.drain()
        if not core.queue.active_users():
            return
    raise AssertionError("the queue never drained")


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


async def one_round(core: DispatchCore) -> None:
    await core.round()
    await core.drain()


def test_every_item_of_a_successful_chunk_is_done_and_mirrored() -> None:
    core, queue, _, index, metrics = make_core()
    queue.put("alice", "a1", "a2", "a3")
    run(settle(core))
    assert queue.done == {("alice", "a1"), ("alice", "a2"), ("alice", "a3")}
    assert index.mirror["alice"] == {"a1", "a2", "a3"}
    assert core.processed == 3 and metrics.done == 3
    assert core.inflight == 0 and not queue.processing


def test_a_transient_failure_is_retried_until_it_succeeds() -> None:
    attempts = {"n": 0}

    def flaky(user: str, item: str):  # type: ignore[no-untyped-def]
        attempts["n"] += 1
        return (
            broken("decode hiccup", False)(user, item) if attempts["n"] == 1 else ok()(user, item)
        )

    core, queue, events, _, metrics = make_core(FakeEmbed({"x": flaky}))
    queue.put("bob", "x")
    run(settle(core))
    assert ("bob", "x") in queue.done
    assert queue.retries[("bob", "x")] == 1
    assert metrics.failed["transient"] == 1
    assert events.of("item_failed") == []


def test_a_transient_failure_errors_after_the_retry_limit_with_an_event() -> None:
    core, queue, events, _, _ = make_core(FakeEmbed({"x": broken("timeout", False)}), max_retries=2)
    queue.put("bob", "x")
    run(settle(core))
    assert queue.errors == {("bob", "x"): "timeout"}
    assert queue.retries[("bob", "x")] == 3
    assert events.of("item_failed") == [
        {"type": "item_failed", "user": "bob", "item": "x", "reason": "timeout"}
    ]


def test_a_permanent_failure_errors_at_once_and_the_rest_of_the_chunk_is_done() -> None:
    core, queue, events, _, metrics = make_core(FakeEmbed({"bad": broken("not an image", True)}))
    queue.put("carol", "good", "bad")
    run(settle(core))
    assert queue.errors == {("carol", "bad"): "not an image"}
    assert queue.retries[("carol", "bad")] == 1
    assert ("carol", "good") in queue.done
    assert metrics.failed["permanent"] == 1
    assert [e["item"] for e in events.of("item_failed")] == ["bad"]


def test_a_dead_worker_requeues_its_chunk_and_names_the_worker() -> None:
    embed = FakeEmbed(raises=WorkerDied("replica killed"))
    core, queue, events, _, metrics = make_core(embed, max_retries=3)
    queue.put("dave", "d1", "d2")
    run(one_round(core))
    assert sorted(queue.queues["dave"]) == ["d1", "d2"]
    assert not queue.processing
    [event] = events.of("worker_dead")
    assert event["worker"] == "dispatcher" and event["user"] == "dave"
    assert sorted(event["requeued"]) == ["d1", "d2"]
    assert metrics.failed["worker_dead"] == 2
    embed.raises = None
    run(settle(core))
    assert queue.done == {("dave", "d1"), ("dave", "d2")}


def test_any_other_embedder_call_failure_counts_as_a_transient_retry() -> None:
    embed = FakeEmbed(raises=RuntimeError("serve redeploying"))
    core, queue, events, _, _ = make_core(embed, max_retries=0)
    queue.put("erin", "e1")
    run(settle(core))
    assert queue.errors[("erin", "e1")].startswith("embedder call failed: RuntimeError")
    assert events.of("item_failed")[0]["item"] == "e1"


def test_vectors_of_another_model_error_out_with_the_reason() -> None:
    embed = FakeEmbed({"new": ok(model="m2")})
    core, queue, events, index, _ = make_core(embed)
    index.model = "m1"
    queue.put("fay", "old", "new")
    run(settle(core))
    assert ("fay", "old") in queue.done
    assert "m1" in queue.errors[("fay", "new")]
    assert queue.retries[("fay", "new")] == 1  # permanent: no retries spent on it
    assert [e["item"] for e in events.of("item_failed")] == ["new"]


def test_a_commit_whose_reply_is_lost_is_sent_again_and_nothing_goes_missing() -> None:
    core, queue, _, index, metrics = make_core()
    index.lose_replies = 1
    queue.put("gus", "g1", "g2")
    run(settle(core))
    assert index.calls == 2
    assert index.mirror["gus"] == {"g1", "g2"}
    assert queue.done == {("gus", "g1"), ("gus", "g2")}
    assert metrics.done == 2 and core.processed == 2


def test_a_photos_ocr_words_go_with_both_models_vectors_during_an_upgrade() -> None:
    """The words are the item's: whichever version the active space takes stores them."""

    def read(user: str, item: str) -> EmbedResult:
        return EmbedResult(
            user, item, "w1", b"\0" * 16, "cap", model_id="m2", dim=4, words="EXIT 12",
            ocr_note="", alt_vector=b"\1" * 8, alt_model_id="m1", alt_dim=2,
        )  # fmt: skip

    core, queue, _, index, _ = make_core(FakeEmbed(behaviour={"sign": read}))
    queue.put("jo", "sign")
    run(settle(core))
    [(rows, alt)] = index.given
    assert rows == [("sign", b"\0" * 16, "cap", "EXIT 12", "")]
    assert alt == ("m1", 2, [("sign", b"\1" * 8, "cap", "EXIT 12", "")])


def test_a_commit_that_keeps_failing_leaves_items_for_the_deadline_sweep() -> None:
    core, queue, events, index, _ = make_core(max_retries=1)
    index.lose_replies = 10**6
    queue.put("hal", "h1")
    run(one_round(core))
    assert core.inflight == 0
    assert ("hal", "h1") in queue.done  # committed in the store; only the mirror missed it
    assert index.mirror["hal"] == set()


def test_the_deadline_sweep_requeues_then_errors_with_events() -> None:
    core, queue, events, _, metrics = make_core(max_retries=1)
    queue.put("ivy", "i1")
    queue.claim("ivy", 1, "dispatcher", 1.0)
    queue.expired.append(("ivy", "i1"))
    core.sweep()
    assert queue.queues["ivy"] == ["i1"]
    assert events.of("task_timeout") == [
        {"type": "task_timeout", "user": "ivy", "item": "i1", "state": "queued"}
    ]
    queue.claim("ivy", 1, "dispatcher", 1.0)
    queue.expired.append(("ivy", "i1"))
    core.sweep()
    assert queue.errors[("ivy", "i1")] == "task timed out"
    assert events.of("item_failed")[0]["reason"] == "task timed out"
    assert metrics.failed["timeout"] == 2


def test_an_item_already_gone_from_processing_is_not_reported_by_the_sweep() -> None:
    core, queue, events, _, _ = make_core()
    queue.expired.append(("jo", "deleted-meanwhile"))
    core.sweep()
    assert events.log == []


def test_claims_never_exceed_the_in_flight_capacity() -> None:
    embed = FakeEmbed(gate=asyncio.Event())
    core, queue, _, _, _ = make_core(embed, batch=4, inflight=2)
    queue.put("big", *[f"b{i}" for i in range(50)])

    async def scenario() -> None:
        rounds = [await core.round() for _ in range(3)]
        assert rounds == [8, 0, 0] and core.inflight == 8
        assert len(core.tasks) == 2  # every spawned task is referenced until it ends
        embed.gate.set()  # type: ignore[union-attr]
        await core.drain()
        assert core.inflight == 0 and not core.tasks

    run(scenario())


def test_a_light_user_is_served_in_the_first_round_beside_a_heavy_one() -> None:
    embed = FakeEmbed()
    core, queue, _, _, _ = make_core(embed, batch=4, inflight=2)
    queue.put("heavy", *[f"h{i}" for i in range(1000)])
    queue.put("light", "l1")
    run(one_round(core))
    assert ("light", ["l1"]) in embed.calls


def test_many_light_users_share_full_chunks_instead_of_one_small_chunk_each() -> None:
    embed = FakeEmbed()
    core, queue, _, index, _ = make_core(embed, batch=4, inflight=2)
    for u in ("ann", "bob", "cat", "dan"):
        queue.put(u, f"{u}1", f"{u}2")
    run(one_round(core))
    assert [sum(len(items) for _, items in chunk) for chunk in embed.chunks] == [4, 4]
    assert {u for chunk in embed.chunks for u, _ in chunk} == {"ann", "bob", "cat", "dan"}
    assert all(index.mirror[u] == {f"{u}1", f"{u}2"} for u in ("ann", "bob", "cat", "dan"))


def test_a_mixed_chunk_settles_each_user_on_its_own() -> None:
    embed = FakeEmbed(behaviour={"bob1": broken("corrupt", permanent=True)})
    core, queue, events, index, _ = make_core(embed, batch=4, inflight=1)
    queue.put("ann", "ann1")
    queue.put("bob", "bob1", "bob2")
    run(one_round(core))
    assert len(embed.chunks) == 1
    assert queue.done == {("ann", "ann1"), ("bob", "bob2")}
    assert queue.errors == {("bob", "bob1"): "corrupt"}
    assert index.mirror["ann"] == {"ann1"} and index.mirror["bob"] == {"bob2"}
    assert core.inflight == 0


def test_a_dead_worker_requeues_every_user_of_its_mixed_chunk() -> None:
    embed = FakeEmbed(raises=WorkerDied("gone"))
    core, queue, events, _, _ = make_core(embed, batch=4, inflight=1)
    queue.put("ann", "ann1")
    queue.put("bob", "bob1")
    run(one_round(core))
    assert queue.queues["ann"] == ["ann1"] and queue.queues["bob"] == ["bob1"]
    assert core.inflight == 0


@pytest.mark.parametrize(
    ("claimed", "chunk", "sizes"),
    [
        ([("a", ["1", "2", "3"]), ("b", ["4"])], 4, [[("a", 3), ("b", 1)]]),
        ([("a", ["1", "2", "3"]), ("b", ["4", "5"])], 4, [[("a", 3), ("b", 1)], [("b", 1)]]),
        ([("a", [str(i) for i in range(9)])], 4, [[("a", 4)], [("a", 4)], [("a", 1)]]),
        ([], 4, []),
    ],
)
def test_pack_fills_chunks_across_users_in_claim_order(
    claimed: list[tuple[str, list[str]]], chunk: int, sizes: list[list[tuple[str, int]]]
) -> None:
    packed = pack(claimed, chunk)
    assert [[(u, len(items)) for u, items in c] for c in packed] == sizes
    assert [i for c in packed for _, items in c for i in items] == [
        i for _, items in claimed for i in items
    ]


def test_queue_depth_is_published_on_a_claim_at_most_once_a_second() -> None:
    core, queue, _, _, metrics = make_core()
    queue.put("kim", "k1", "k2")
    core.claim(1)
    assert metrics.depth == {"queued": 2, "processing": 0}  # read before this claim
    core.claim(1)
    assert queue.depth_reads == 1  # a gauge: not read again within the second
    core._gauged_at -= 1.0
    core.claim(1)
    assert queue.depth_reads == 2 and metrics.depth == {"queued": 0, "processing": 2}


def test_every_user_of_a_claim_pass_is_claimed_in_one_store_call() -> None:
    core, queue, _, _, _ = make_core(batch=4, inflight=8)  # 32 in flight
    for u in ("ann", "bob", "cat"):
        queue.put(u, *[f"{u}{i}" for i in range(3)])
    queue.put("heavy", *[f"h{i}" for i in range(100)])
    claimed = core.claim(core.capacity)
    assert queue.claim_passes[0] == [("ann", 4), ("bob", 4), ("cat", 4), ("heavy", 4)]
    assert all(len(p) == 1 and p[0][0] == "heavy" for p in queue.claim_passes[1:])
    assert sum(len(items) for _, items in claimed) == 32


def test_a_chunks_users_are_committed_in_one_call_each_answered_on_its_own() -> None:
    embed = FakeEmbed(behaviour={f"bob{i}": ok(model="m2") for i in range(2)})
    core, queue, events, index, metrics = make_core(embed, batch=8, inflight=1)
    index.model = "m1"
    for u in ("ann", "bob", "cat"):
        queue.put(u, f"{u}0", f"{u}1")
    run(one_round(core))
    assert index.batches == [["ann", "bob", "cat"]]
    assert queue.done == {(u, f"{u}{i}") for u in ("ann", "cat") for i in range(2)}
    assert set(queue.errors) == {("bob", "bob0"), ("bob", "bob1")}  # another model's vectors
    assert all("m1" in reason for reason in queue.errors.values())
    assert queue.retries[("bob", "bob0")] == 1  # permanent: no retries spent
    assert index.mirror["ann"] == {"ann0", "ann1"} and index.mirror["cat"] == {"cat0", "cat1"}
    assert metrics.done == 4 and core.processed == 4 and core.inflight == 0


def test_a_batch_whose_reply_is_lost_is_sent_again_and_every_user_is_mirrored() -> None:
    core, queue, _, index, metrics = make_core(batch=8, inflight=1)
    index.lose_batches = 1
    for u in ("ann", "bob"):
        queue.put(u, f"{u}0", f"{u}1")
    run(settle(core))
    assert index.batches == [["ann", "bob"], ["ann", "bob"]]
    assert index.mirror["ann"] == {"ann0", "ann1"} and index.mirror["bob"] == {"bob0", "bob1"}
    assert queue.done == {(u, f"{u}{i}") for u in ("ann", "bob") for i in range(2)}
    assert metrics.done == 4 and core.processed == 4


def test_only_the_requests_that_failed_are_sent_again() -> None:
    core, queue, _, index, _ = make_core(batch=8, inflight=1)
    index.lose_replies = 1  # the first request's reply (ann's) is lost, bob's arrives
    for u in ("ann", "bob"):
        queue.put(u, f"{u}0")
    run(settle(core))
    assert index.batches == [["ann", "bob"], ["ann"]]
    assert index.mirror["ann"] == {"ann0"} and index.mirror["bob"] == {"bob0"}


@pytest.mark.parametrize(
    ("users", "capacity", "quantum", "expected"),
    [
        ([], 10, 4, []),
        (["a"], 0, 4, []),
        (["a", "b"], 8, 4, [("a", 4), ("b", 4)]),
        (["a", "b", "c"], 6, 4, [("a", 4), ("b", 2)]),
        (["a", "b", "c"], 2, 4, [("a", 2)]),
    ],
)
def test_round_robin_gives_whole_turns_while_capacity_lasts(
    users: list[str], capacity: int, quantum: int, expected: list[tuple[str, int]]
) -> None:
    assert RoundRobin().plan(users, capacity, quantum) == expected


def test_round_robin_starts_the_next_pass_with_the_users_left_out() -> None:
    rr = RoundRobin()
    assert rr.plan(["a", "b", "c"], 8, 4) == [("a", 4), ("b", 4)]
    assert rr.plan(["a", "b", "c"], 8, 4) == [("c", 4), ("a", 4)]


def test_round_robin_serves_every_user_once_per_rotation() -> None:
    rr = RoundRobin()
    users = [f"u{i}" for i in range(10)]
    turns = [rr.plan(users, capacity=32, quantum=32) for _ in range(20)]
    assert all(len(t) == 1 and t[0][1] == 32 for t in turns)
    served = [t[0][0] for t in turns]
    assert served[:10] == users and served[10:] == users  # nobody waits more than n chunks


@pytest.mark.parametrize(
    ("users", "capacity", "per_user", "expected"),
    [
        ([], 10, 4, []),
        (["a"], 0, 4, []),
        (["a", "b"], 100, 32, [("a", 32), ("b", 32)]),
        (["a", "b"], 10, 32, [("a", 5), ("b", 5)]),
        (["a", "b", "c"], 2, 4, [("a", 1), ("b", 1)]),
    ],
)
def test_split_shares_leftover_capacity_evenly(
    users: list[str], capacity: int, per_user: int, expected: list[tuple[str, int]]
) -> None:
    assert split(users, capacity, per_user) == expected


def test_many_users_with_work_queued_get_a_chunk_each() -> None:
    """The point of whole turns: a chunk pays the per-user costs once, as one user's would."""
    embed = FakeEmbed()
    core, queue, _, _, _ = make_core(embed, batch=8, inflight=4)  # 32 in flight
    for u in range(21):
        queue.put(f"u{u:02}", *[f"u{u:02}-{i}" for i in range(40)])
    run(one_round(core))
    assert [[user for user, _ in parts] for parts in embed.chunks] == [
        ["u00"], ["u01"], ["u02"], ["u03"]
    ]  # fmt: skip
    assert queue.claim_passes == [[("u00", 8), ("u01", 8), ("u02", 8), ("u03", 8)]]
    run(one_round(core))
    assert [parts[0][0] for parts in embed.chunks[4:]] == ["u04", "u05", "u06", "u07"]


def test_many_light_users_fill_a_chunk_in_a_few_claims() -> None:
    embed = FakeEmbed()
    core, queue, _, _, _ = make_core(embed, batch=32, inflight=1)  # one chunk of 32
    for u in range(20):
        queue.put(f"light{u:02}", f"l{u}a", f"l{u}b")
    claimed = core.claim(core.capacity)
    assert sum(len(items) for _, items in claimed) == 32  # the chunk is full
    # one turn (2 of 32 used), the 30 left shared by the 19 others (one each), then 11 more:
    # three claims, not one per user
    assert [len(p) for p in queue.claim_passes] == [1, 19, 11]
    assert {u for u, _ in claimed} == {f"light{u:02}" for u in range(20)}


def test_a_light_user_waits_at_most_one_chunk_per_user_ahead() -> None:
    embed = FakeEmbed()
    core, queue, _, _, _ = make_core(embed, batch=8, inflight=1)
    for u in ("h1", "h2", "h3"):
        queue.put(u, *[f"{u}-{i}" for i in range(100)])
    run(one_round(core))  # h1's turn
    queue.put("light", "l1")
    passes = 0
    while ("light", "l1") not in queue.done:
        run(one_round(core))
        passes += 1
    assert passes <= 3  # h2, h3 (or fewer), then light


def test_capacity_a_light_user_leaves_unused_goes_to_the_heavy_user() -> None:
    embed = FakeEmbed()
    core, queue, _, _, _ = make_core(embed, batch=4, inflight=4)  # 16 in flight
    queue.put("heavy", *[f"h{i}" for i in range(100)])
    queue.put("light", "l1")
    claimed = core.claim(core.capacity)
    assert sum(len(items) for _, items in claimed) == 16  # the window is full
    assert ("light", ["l1"]) in claimed


def test_pacing_follows_the_live_replicas_batch_size() -> None:
    settings = QueueSettings(dispatch_batch_size=32, max_inflight_batches=4)
    assert pace(settings, []) == Pacing(chunk=32, window=128)
    assert pace(settings, [256, 256]) == Pacing(chunk=256, window=256 * 5)
    assert pace(settings, [64]).window == 64 * 4  # never below max_inflight_batches chunks


def test_a_dispatcher_shard_claims_and_sweeps_only_its_own_users() -> None:
    queue, events, metrics = FakeQueue(), FakeEvents(), FakeMetrics()
    core = DispatchCore(
        QueueSettings(), queue, events, FakeEmbed(), FakeIndex(queue), metrics,
        owns=lambda user: user.startswith("a"),
    )  # fmt: skip
    queue.put("alice", "a1")
    queue.put("bob", "b1")
    assert [u for u, _ in core.claim(10)] == ["alice"]
    queue.claim("bob", 1, "dispatcher", 1.0)
    queue.expired.append(("bob", "b1"))
    core.sweep()
    assert events.log == [] and queue.expired == [("bob", "b1")]


def test_an_idle_dispatcher_sleeps_until_woken_and_then_claims_at_once() -> None:
    settings = QueueSettings(idle_check_s=3600)
    queue, events, metrics = FakeQueue(), FakeEvents(), FakeMetrics()
    index = FakeIndex(queue)
    core = DispatchCore(settings, queue, events, FakeEmbed(), index, metrics)

    async def scenario() -> None:
        task = asyncio.get_running_loop().create_task(core.run())
        await wait_until_async(lambda: core.sleeping, 10, "the dispatcher to go idle")
        calls = queue.calls
        for _ in range(100):  # many loop turns: an idle dispatcher makes no store calls
            await asyncio.sleep(0)
        assert queue.calls == calls and core.sleeping
        queue.put("alice", "a1", "a2")
        core.wake()
        await wait_until_async(lambda: len(queue.done) == 2, 10, "the woken dispatcher's work")
        await wait_until_async(lambda: core.sleeping, 10, "idle again")
        task.cancel()

    run(scenario())
