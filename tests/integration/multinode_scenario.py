"""A head and two worker nodes on one machine; a worker node is removed mid-ingest.

Run as a subprocess by `test_multinode.py` (it needs a Ray cluster of its own):
    python -m tests.integration.multinode_scenario SETTINGS_JSON
Prints one JSON line with what happened; exits 0 when nothing was lost.
"""

from __future__ import annotations

import contextlib
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import ray
from ray.cluster_utils import Cluster

from actors.index_shard import get_index_shard
from actors.naming import NAMESPACE, shard_for
from deploy import deploy, free_port, load_config
from lumen.config import Settings
from lumen.storage import Stores
from lumen.storage.queue import QueueStatus
from tests.support.hostile import make_zip, noisy_jpegs
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
N_ITEMS = 400
REMOVE_AFTER = 60  # items done before a worker node goes
NODE_LOSS = {"node_dead", "worker_dead", "replica_dead"}  # events that can say so


def _config(overrides: dict[str, Any], port: int) -> dict[str, Any]:
    config = load_config(ROOT / "configs" / "local.yaml", overrides)
    config["http_options"]["port"] = port
    app = config["applications"][0]
    for dep in app["deployments"]:
        if dep["name"] == "Embedder":  # one replica on each worker node, none on the head
            dep.pop("autoscaling_config", None)
            dep["num_replicas"] = 2
            dep["ray_actor_options"] = {"num_cpus": 1, "resources": {"embedder_node": 1}}
        else:
            dep["ray_actor_options"] = {"num_cpus": 0.1, "resources": {"head": 0.01}}
    return config


def _user(client: httpx.Client) -> dict[str, str]:
    client.post("/signup", json={"username": "nodeuser", "password": "correct horse"})
    r = client.post("/login", data={"username": "nodeuser", "password": "correct horse"})
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def main(overrides: dict[str, Any]) -> int:
    overrides = copy.deepcopy(overrides)
    overrides["actor_resources"] = {"head": 0.001}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 2,
            "resources": {"head": 1},
            "include_dashboard": True,
            "dashboard_port": free_port(),  # never collide with another Ray on the machine
        },
    )
    workers = [cluster.add_node(num_cpus=1, resources={"embedder_node": 1}) for _ in range(2)]
    ray.init(address=cluster.address, namespace=NAMESPACE)
    port = free_port()
    deploy(_config(overrides, port))
    settings = Settings(**overrides)
    stores = Stores(settings)
    result: dict[str, Any] = {"removed_node": False}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
        h = _user(client)
        body = client.post(
            "/upload",
            headers=h,
            files={"zip_file": ("n.zip", make_zip(noisy_jpegs(N_ITEMS, side=128, seed=21)), "x")},
        ).json()
        queued = body["queued"]
        deadline = time.monotonic() + 600

        def status() -> QueueStatus:
            return stores.queue.status("nodeuser", N_ITEMS)

        def done_enough() -> int:
            done = len(status().done)
            return done if done >= REMOVE_AFTER else 0

        def settled() -> bool:
            st = status()
            return st.queue == 0 and not st.processing and len(st.done) + len(st.errors) >= N_ITEMS

        def loss_reported() -> bool:
            return bool(NODE_LOSS & {e["type"] for e in stores.events.list()})

        # a wait that runs out is not fatal here: the printed result says what happened
        with contextlib.suppress(AssertionError):
            done = wait_until(done_enough, 600, f"{REMOVE_AFTER} items done", poll_s=0.25)
            cluster.remove_node(workers[0])
            result.update(removed_node=True, done_at_removal=done)
            wait_until(settled, deadline - time.monotonic(), "every item settled", poll_s=0.25)
            wait_until(loss_reported, 30, "the monitor to report the lost node", poll_s=0.25)
        st = status()
        shard = get_index_shard(settings, shard_for("nodeuser", settings.queue.index_shards))
        ids = ray.get(shard.ids.remote("nodeuser"))
        events = stores.events.list()
    result.update(
        queued=len(queued),
        done=len(st.done),
        errors=st.errors,
        same_items=sorted(st.done) == sorted(queued),
        index_size=len(ids),
        unique_ids=len(set(ids)),
        vectors=stores.vectors.count("nodeuser"),
        event_types=sorted({e["type"] for e in events}),
        requeued=sum(len(e.get("requeued", [])) for e in events if e["type"] == "worker_dead"),
    )
    print(json.dumps(result))
    ray.shutdown()
    cluster.shutdown()
    ok = result["same_items"] and not st.errors and len(ids) == len(set(ids)) == N_ITEMS
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(json.loads(sys.argv[1])))
