"""Fair dispatch, autoscaling, exactly-once indexing under kills, and task timeouts."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import ray
from ray import serve

from actors.index_shard import get_index_shard
from actors.naming import shard_for
from lumen.storage import Stores
from lumen.storage.queue import NewItem
from tests.conftest import Service
from tests.support.chaos import kill_one_embedder_replica
from tests.support.hostile import make_zip, noisy_jpegs
from tests.support.http import sse_events, status_snapshot, upload_zip, wait_settled
from tests.support.waiting import wait_until


def _embedder_replicas(state: str = "RUNNING") -> int:
    app = serve.status().applications["lumen"]
    states = app.deployments["Embedder"].replica_states
    return int(states.get(state, 0))


def _keep_a_backlog_until_scaled_out(
    service: Service, headers: dict[str, str], seen_replicas: list[tuple[int, int]]
) -> int:
    """Top the heavy user's queue up until a second Embedder replica has served; returns the
    items added. How long a backlog of 6,000 lasts depends on the machine: on 2 busy cores
    a new replica took 15-20 s to start and the backlog drained first (the scale-out was
    decided, the replica never ran). The test is about scaling under load, so the load
    lasts until the scale-out happened or a deadline passed."""
    added, seed = 0, 100
    deadline = time.time() + 240
    while max(r for r, _ in seen_replicas) < 2 and time.time() < deadline:
        if status_snapshot(service, headers)["queue"] < 1500:
            seed += 1
            body = upload_zip(service, headers, make_zip(noisy_jpegs(1500, side=96, seed=seed)))
            added += len(body.json()["queued"])
        time.sleep(1)
    return added


def test_light_user_is_not_starved_and_the_embedder_scales_out_and_back(
    service: Service,
) -> None:
    _, heavy = service.new_user("heavy")
    _, light = service.new_user("light")
    heavy_zip = make_zip(noisy_jpegs(6000, side=96, seed=1))
    light_zip = make_zip(noisy_jpegs(5, side=128, seed=2))
    seen_replicas: list[tuple[int, int]] = []  # (running, starting)
    stop = threading.Event()

    def watch() -> None:  # samples the replica counts twice a second until stopped
        while True:
            seen_replicas.append((_embedder_replicas(), _embedder_replicas("STARTING")))
            if stop.wait(0.5):
                return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    started = time.time()
    try:
        # Heavy's upload queues its chunks while it extracts, and embedding starts at once;
        # the light user uploads as soon as heavy's work is flowing.
        with ThreadPoolExecutor(1) as pool:
            heavy_upload = pool.submit(upload_zip, service, heavy, heavy_zip)
            wait_until(
                lambda: status_snapshot(service, heavy)["done"], 300, "heavy's first items done"
            )
            assert len(upload_zip(service, light, light_zip).json()["queued"]) == 5
            wait_settled(service, light, 5, timeout_s=300)
            heavy_done_then = len(status_snapshot(service, heavy)["done"])
            assert len(heavy_upload.result().json()["queued"]) == 6000
        assert heavy_done_then < 3000, heavy_done_then  # light's 5 finished before heavy's half
        total = 6000 + _keep_a_backlog_until_scaled_out(service, heavy, seen_replicas)
        final = wait_settled(service, heavy, total, timeout_s=600)
        took_s = time.time() - started
        print(f"{total} queued items settled in {took_s:.1f} s; replicas {seen_replicas}")
        assert len(final["done"]) == total and final["errors"] == {}
        idle = "the Embedder to scale back to one replica when idle"
        wait_until(lambda: _embedder_replicas() == 1, 120, idle, poll_s=1)
    finally:
        stop.set()
        watcher.join()
    assert max(r for r, _ in seen_replicas) >= 2, seen_replicas  # grew under the backlog


def test_every_item_is_indexed_exactly_once_despite_replica_and_shard_kills(
    service: Service,
) -> None:
    user, h = service.new_user("chaos")
    n = 600
    body = upload_zip(service, h, make_zip(noisy_jpegs(n, side=160, seed=3))).json()
    assert len(body["queued"]) == n
    settings = service.settings
    shard = get_index_shard(settings, shard_for(user, settings.queue.index_shards))
    killed_replica = False
    killed_shard = False
    for event in sse_events(service, "/status", h, timeout_s=600):
        done = len(event["done"])
        if not killed_replica and event["processing"] and done >= 30:
            kill_one_embedder_replica()
            killed_replica = True
        if not killed_shard and done >= 200:
            ray.kill(shard, no_restart=False)
            killed_shard = True
        if event["queue"] == 0 and not event["processing"] and done + len(event["errors"]) >= n:
            break
    assert killed_replica and killed_shard
    final = status_snapshot(service, h)
    assert final["errors"] == {}
    assert sorted(final["done"]) == sorted(body["queued"])
    stores = Stores(settings)
    assert stores.vectors.count(user) == n
    ids = ray.get(shard.ids.remote(user))
    assert len(ids) == n and len(set(ids)) == n  # each item exactly once in the index
    events = stores.events.list()
    mine = [e for e in events if e["type"] == "worker_dead" and e.get("user") == user]
    requeued = [i for e in mine for i in e["requeued"]]
    assert set(requeued) <= set(body["queued"])
    assert any(e["type"] in ("worker_dead", "replica_dead") for e in events)


def test_a_hanging_task_times_out_is_retried_then_errors(service: Service) -> None:
    """A FIFO blocks the decoder's open() forever: a task that hangs, made for real."""
    user, h = service.new_user("hang")
    settings = service.settings
    stores = Stores(settings)
    folder = Path(settings.data_dir) / "uploads" / user
    folder.mkdir(parents=True, exist_ok=True)
    fifos = [folder / "first.jpg", folder / "last_try.jpg"]
    for f in fifos:
        os.mkfifo(f)
    items = [f"uploads/{user}/{f.name}" for f in fifos]
    # the second item already used all but one of its attempts
    stores.redis.hset(stores.keys.retries(user), items[1], settings.queue.max_retries)
    stores.queue.enqueue(user, [NewItem(i, f"sha-{i}") for i in items])

    def first_timeouts() -> dict[str, dict[str, Any]]:
        """Each item's first task_timeout event, once every item has one."""
        first: dict[str, dict[str, Any]] = {}
        for e in reversed(stores.events.list()):  # oldest first
            if e["type"] == "task_timeout" and e["item"] in items:
                first.setdefault(str(e["item"]), e)
        return first if len(first) == len(items) else {}

    try:
        timeouts = wait_until(
            first_timeouts,
            settings.queue.task_timeout_s * 3 + 30,
            "a task_timeout event for each hanging item",
            poll_s=0.5,
        )
        assert timeouts[items[0]]["state"] == "queued"
        assert timeouts[items[1]]["state"] == "error"
        st = status_snapshot(service, h)
        assert int(st["retries"][items[0]]) >= 1
        assert st["errors"] == {items[1]: "task timed out"}
    finally:
        stores.queue.reset(user)
        for f in fifos:  # each open/close hands one blocked decoder an EOF
            for _ in range(10):
                try:
                    os.close(os.open(f, os.O_WRONLY | os.O_NONBLOCK))
                except OSError:  # no reader left
                    break
