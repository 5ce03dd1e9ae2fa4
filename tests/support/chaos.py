"""Fault injection against the running local Ray cluster (integration tests only)."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

import ray

from lumen.naming import replica_tag_of, worker_id
from tests.support.waiting import wait_until

EMBEDDER_CLASS = "ServeReplica:lumen:Embedder"


def live_embedder_replicas() -> list[Any]:
    """The state API's rows of the Embedder replicas that are alive now."""
    from ray.util.state import list_actors

    return list_actors(
        address=ray.get_runtime_context().gcs_address,
        filters=[("class_name", "=", EMBEDDER_CLASS), ("state", "=", "ALIVE")],
        raise_on_missing_output=False,
    )


def kill_one_embedder_replica() -> str:
    """SIGKILL one live Embedder replica's process; returns its actor name.

    A replacement for an earlier kill may still be starting, so this waits for a live one.
    """
    actors = wait_until(live_embedder_replicas, 90, "a live Embedder replica", poll_s=0.5)
    os.kill(actors[0].pid, signal.SIGKILL)
    return str(actors[0].name)


def kill_busy_embedder_replica(busy_workers: Callable[[], set[str]]) -> str:
    """SIGKILL a live Embedder replica that holds items right now (by the worker ids that
    `busy_workers` reads from the queue's processing records); returns its actor name."""

    def busy() -> Any:
        workers = busy_workers()
        for actor in live_embedder_replicas():
            if worker_id(replica_tag_of(str(actor.name)) or "") in workers:
                return actor
        return None

    actor = wait_until(busy, 90, "a live Embedder replica with items in flight", poll_s=0.01)
    os.kill(actor.pid, signal.SIGKILL)
    return str(actor.name)
