"""Fair dispatch, autoscaling, exactly-once indexing under kills, and task timeouts."""

from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path

import numpy as np
import ray
from PIL import Image
from ray import serve

from actors.index_shard import get_index_shard
from actors.naming import shard_for
from lumen.storage import Stores
from lumen.storage.queue import NewItem
from tests.conftest import Service
from tests.integration.helpers import sse_events, status_snapshot, upload_zip, wait_settled
from tests.support.hostile import make_zip


def _noisy_jpegs(n: int, side: int = 256, seed: int = 0) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        arr = rng.integers(0, 255, size=(side, side, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=80)
        out[f"img_{i:05d}.jpg"] = buf.getvalue()
    return out


def _embedder_replicas(state: str = "RUNNING") -> int:
    app = serve.status().applications["lumen"]
    states = app.deployments["Embedder"].replica_states
    return int(states.get(state, 0))


def test_light_user_is_not_starved_and_the_embedder_scales_out_and_back(
    service: Service,
) -> None:
    _, heavy = service.new_user("heavy")
    _, light = service.new_user("light")
    heavy_zip = make_zip(_noisy_jpegs(6000, side=96, seed=1))
    light_zip = make_zip(_noisy_jpegs(5, side=128, seed=2))
    seen_replicas: list[tuple[int, int]] = []  # (running, starting)
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen_replicas.append((_embedder_replicas(), _embedder_replicas("STARTING")))
            time.sleep(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    started = time.time()
    assert len(upload_zip(service, heavy, heavy_zip).json()["queued"]) == 6000
    assert len(upload_zip(service, light, light_zip).json()["queued"]) == 5
    wait_settled(service, light, 5, timeout_s=300)
    heavy_done_then = len(status_snapshot(service, heavy)["done"])
    assert heavy_done_then < 3000, heavy_done_then  # light's 5 finished before heavy's half
    final = wait_settled(service, heavy, 6000, timeout_s=600)
    print(f"6000 queued items settled in {time.time() - started:.1f} s; replicas {seen_replicas}")
    assert len(final["done"]) == 6000 and final["errors"] == {}
    deadline = time.time() + 120
    while time.time() < deadline and _embedder_replicas() != 1:
        time.sleep(1)
    stop.set()
    watcher.join()
    assert max(r for r, _ in seen_replicas) >= 2, seen_replicas  # grew under the backlog
    assert _embedder_replicas() == 1  # and shrank back when idle


def _kill_one_embedder_replica() -> str:
    from ray.util.state import list_actors

    deadline = time.time() + 90  # a replacement for an earlier kill may still be starting
    while True:
        actors = list_actors(
            address=ray.get_runtime_context().gcs_address,
            filters=[("class_name", "=", "ServeReplica:lumen:Embedder"), ("state", "=", "ALIVE")],
            raise_on_missing_output=False,
        )
        if actors or time.time() > deadline:
            break
        time.sleep(0.5)
    assert actors, "no live Embedder replica"
    os.kill(actors[0].pid, 9)
    return str(actors[0].name)


def test_every_item_is_indexed_exactly_once_despite_replica_and_shard_kills(
    service: Service,
) -> None:
    user, h = service.new_user("chaos")
    n = 600
    body = upload_zip(service, h, make_zip(_noisy_jpegs(n, side=160, seed=3))).json()
    assert len(body["queued"]) == n
    settings = service.settings
    shard = get_index_shard(settings, shard_for(user, settings.queue.index_shards))
    killed_replica = False
    killed_shard = False
    for event in sse_events(service, "/status", h, timeout_s=600):
        done = len(event["done"])
        if not killed_replica and event["processing"] and done >= 30:
            _kill_one_embedder_replica()
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
    try:
        deadline = time.time() + settings.queue.task_timeout_s * 3 + 30
        timeouts: dict[str, dict[str, object]] = {}
        while time.time() < deadline and len(timeouts) < 2:
            for e in stores.events.list():
                if e["type"] == "task_timeout" and e["item"] in items:
                    timeouts.setdefault(str(e["item"]), e)
            time.sleep(0.5)
        assert set(timeouts) == set(items)
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
