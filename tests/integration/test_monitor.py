"""Worker monitor and system events over SSE, and a chaos run that must lose nothing."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
import ray

from actors.dispatcher import get_dispatcher
from actors.index_shard import get_index_shard
from actors.naming import shard_for
from lumen.naming import replica_tag_of, worker_id
from lumen.storage import Stores
from tests.conftest import Service, admin_headers
from tests.support.chaos import kill_every_embedder_replica
from tests.support.hostile import make_zip, noisy_jpegs
from tests.support.http import search, sse_events, status_snapshot, upload_zip
from tests.support.waiting import wait_until


def test_worker_stream_shows_each_embedder_replica_with_metrics(service: Service) -> None:
    _, h = service.new_user()
    deadline = time.time() + 60
    for view in sse_events(service, "/monitor/worker", h):
        healthy = {w: v for w, v in view.items() if v["status"] == "health"}
        if healthy:
            worker, entry = next(iter(healthy.items()))
            assert worker.startswith("embedder-")
            assert set(entry["metrics"]) >= {"cpu", "mem", "ts"}
            assert abs(entry["metrics"]["ts"] - time.time()) < 30
            return
        assert time.time() < deadline, view
    raise AssertionError("stream ended")


def test_events_stream_newest_first_and_only_operators_may_reset(service: Service) -> None:
    me, h = service.new_user()
    stores = Stores(service.settings)
    stores.events.record("task_timeout", user="someone", item="uploads/someone/a.jpg")
    stores.events.record("item_failed", user="someone", item="uploads/someone/b.jpg")
    stores.events.record("item_failed", user=me, item=f"uploads/{me}/mine.jpg", reason="bad")
    # Service-wide events (a replica an earlier test scaled away) may arrive meanwhile: only
    # the kinds recorded here are compared.
    kinds = ("task_timeout", "item_failed")
    events = next(iter(sse_events(service, "/monitor/events", h)))
    assert isinstance(events, list)
    seen = [e for e in events if e["type"] in kinds]
    # a plain user: their own events in full, nobody else's names, items or reasons
    assert seen[0]["type"] == "item_failed"
    assert seen[0]["item"] == f"uploads/{me}/mine.jpg" and seen[0]["reason"] == "bad"
    assert [e["type"] for e in seen[1:]] == ["task_timeout"]
    assert "ts" in seen[1] and "user" not in seen[1] and "item" not in seen[1]
    assert "someone" not in json.dumps(events)
    everything = next(iter(sse_events(service, "/monitor/events", admin_headers(service))))
    users = [e.get("user") for e in everything if e["type"] in kinds]
    assert users[:3] == [me, "someone", "someone"]
    with service.client() as c:
        r = c.post("/monitor/events/reset", headers=h)
        assert r.status_code == 403
        assert stores.events.list()  # nothing was lost by the refused reset
        token = h["Authorization"].split()[1]
        assert c.post(f"/monitor/events/reset?token={token}").status_code == 401
        assert c.post("/monitor/events/reset", headers=h).json()["code"] == "forbidden"
        r = c.post("/monitor/events/reset", headers=admin_headers(service))
        assert r.status_code == 200
        assert r.json() == {"message": "Monitor events reset successfully."}
    assert stores.events.list() == []


def _watch_workers(
    service: Service, h: dict[str, str], stop: threading.Event, seen: list[dict[str, Any]]
) -> None:
    try:
        for view in sse_events(service, "/monitor/worker", h, timeout_s=900):
            seen.append(view)
            if stop.is_set():
                return
    except httpx.HTTPError:
        pass


def _dead_and_healthy_seen(views: list[dict[str, Any]]) -> bool:
    """Whether the worker views so far showed a replica dead and another one healthy."""
    statuses = {(w, v["status"]) for view in list(views) for w, v in view.items()}
    dead_workers = {w for w, s in statuses if s == "dead"}
    return bool(dead_workers) and any(s == "health" and w not in dead_workers for w, s in statuses)


def test_chaos_ingest_loses_nothing_and_indexes_each_item_once(service: Service) -> None:
    """SIGKILL replicas repeatedly, kill the dispatcher and a shard, restart Redis (AOF)."""
    user, h = service.new_user("chaos")
    n = 1000
    images = noisy_jpegs(n, side=128, seed=11)
    body = upload_zip(service, h, make_zip(images)).json()
    assert len(body["queued"]) == n
    settings = service.settings
    stores = Stores(settings)
    views: list[dict[str, Any]] = []
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_workers, args=(service, h, stop, views), daemon=True)
    watcher.start()
    shard = get_index_shard(settings, shard_for(user, settings.queue.index_shards))
    plan = ["replica", "dispatcher", "replica", "shard", "redis", "replica"]
    deadline = time.monotonic() + 900

    def done() -> int:
        return len(stores.queue.status(user, n).done)

    def settled() -> bool:
        st = stores.queue.status(user, n)
        return st.queue == 0 and not st.processing and len(st.done) + len(st.errors) >= n

    killed: list[str] = []
    for step, action in enumerate(plan, start=1):  # one fault every 80 items done
        left_s = deadline - time.monotonic()
        wait_until(lambda step=step: done() >= step * 80, left_s, f"{step * 80} done", poll_s=0.5)
        if action == "replica":  # all of them, mid-backlog
            killed += [
                worker_id(replica_tag_of(name) or "") for name in kill_every_embedder_replica()
            ]
        elif action == "dispatcher":
            ray.kill(get_dispatcher(settings), no_restart=False)
        elif action == "shard":
            ray.kill(shard, no_restart=False)
        else:
            service.redis.restart()
    wait_until(settled, deadline - time.monotonic(), "every item settled", poll_s=0.5)
    wait_until(
        lambda: _dead_and_healthy_seen(views),
        60,
        "the worker stream to show the killed replica dead and another one healthy",
        poll_s=0.25,
    )
    stop.set()
    final = status_snapshot(service, h)
    assert final["errors"] == {}
    assert sorted(final["done"]) == sorted(body["queued"])
    # search answers from the shard's mirror: every sampled item is found by an exact copy
    for name in sorted(images)[:: n // 40]:
        r = search(service, h, image=images[name], top_k=10)
        assert r.status_code == 200, r.text
        found = {x["filename"]: x["similarity"] for x in r.json()["results"]}
        item = next(q for q in body["queued"] if q.endswith(f"/{name}"))
        assert found.get(item, 0.0) > 0.999, (item, found)
    ids = ray.get(shard.ids.remote(user))
    assert stores.vectors.count(user) == n and len(ids) == n and len(set(ids)) == n

    # Every killed replica is reported dead by the monitor. A chunk a replica had accepted
    # dies with it and is requeued with a worker_dead event naming this user's items; one it
    # had not accepted yet is sent to another replica by Serve, with nothing to report.
    # (The requeue path itself is unit-tested in tests/unit/test_dispatch.py.)
    def reported() -> set[str]:
        return {e.get("worker") for e in stores.events.list() if e["type"] == "replica_dead"}

    wait_until(lambda: set(killed) <= reported(), 60, f"replica_dead for each of {killed}")
    events = stores.events.list()
    dead = [e for e in events if e["type"] == "worker_dead" and e.get("user") == user]
    assert all(set(e["requeued"]) <= set(body["queued"]) for e in dead)
