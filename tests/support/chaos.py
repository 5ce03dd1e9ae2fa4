"""Fault injection against the running local Ray cluster (integration tests only)."""

from __future__ import annotations

import os
import signal
from typing import Any

import ray

from lumen.config import Settings
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


def kill_every_embedder_replica() -> list[str]:
    """SIGKILL every live Embedder replica at once; returns their actor names.

    While a backlog is being dispatched, chunks are always waiting on some replica, so
    killing them all is certain to kill work in flight (one replica might be between
    chunks, or hold only items a killed dispatcher left behind).
    """
    actors = wait_until(live_embedder_replicas, 90, "a live Embedder replica", poll_s=0.1)
    for actor in actors:
        os.kill(actor.pid, signal.SIGKILL)
    return [str(a.name) for a in actors]


def kill_app_actors(settings: Settings) -> None:
    """End the detached actors of the app `settings` names (monitor, re-embedding driver,
    dispatchers, index shards): a test's own app leaves none behind once it is deleted."""
    from actors.naming import (
        NAMESPACE,
        dispatcher_name,
        index_shard_name,
        monitor_name,
        reembedder_name,
    )

    app, queue = settings.app_name, settings.queue
    names = [monitor_name(app), reembedder_name(app)]
    names += [dispatcher_name(app, n) for n in range(queue.dispatchers)]
    names += [index_shard_name(app, n) for n in range(queue.index_shards)]
    for name in names:
        try:
            ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)
        except ValueError:  # never created
            continue
