"""Worker health: Ray's state API joined with heartbeats, as the project's own models.

The only module that imports `ray.util.state`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ReplicaState:
    """One Embedder replica as Ray sees it."""

    worker: str  # "embedder-<replica tag>", the id heartbeats and processing_workers use
    state: str  # Ray actor state: ALIVE, DEAD, RESTARTING, PENDING_CREATION...
    node_id: str | None = None
    death_cause: str | None = None


@dataclass
class WorkerBook:
    """Joins replica states with heartbeats; remembers dead replicas for `dead_ttl_s`."""

    stale_after_s: float
    dead_ttl_s: float
    dead_since: dict[str, float] = field(default_factory=dict)
    last: dict[str, dict[str, Any]] = field(default_factory=dict)

    def update(
        self,
        replicas: list[ReplicaState],
        heartbeats: dict[str, dict[str, Any]],
        now: float | None = None,
    ) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """Return the `/monitor/worker` view and the workers that newly died."""
        now = time.time() if now is None else now
        view: dict[str, dict[str, Any]] = {}
        newly_dead: list[str] = []
        for rep in replicas:
            beat = heartbeats.get(rep.worker)
            if rep.state == "DEAD":
                if rep.worker not in self.dead_since:
                    self.dead_since[rep.worker] = now
                    newly_dead.append(rep.worker)
                if now - self.dead_since[rep.worker] > self.dead_ttl_s:
                    continue
                entry: dict[str, Any] = {"status": "dead"}
                if rep.death_cause:
                    entry["cause"] = rep.death_cause
            elif beat is None:
                entry = {"status": "starting"}
            elif now - float(beat.get("ts", 0)) > self.stale_after_s:
                entry = {"status": "stale", "metrics": beat}
            else:
                entry = {"status": "health", "metrics": beat}
            if rep.node_id:
                entry["node_id"] = rep.node_id
            view[rep.worker] = entry
        self.last = view
        return view, newly_dead


def list_embedder_replicas(app_name: str, deployment: str = "Embedder") -> list[ReplicaState]:
    """Embedder replica actors from Ray's state API (needs the dashboard)."""
    from ray.util.state import list_actors

    class_name = f"ServeReplica:{app_name}:{deployment}"
    actors = list_actors(
        address=_gcs_address(),
        filters=[("class_name", "=", class_name)],
        limit=1000,
        detail=True,
        raise_on_missing_output=False,
    )
    out = []
    for actor in actors:
        name = actor.name or ""
        tag = name.rsplit("#", 1)[-1] if "#" in name else actor.actor_id
        cause = None
        if actor.death_cause:
            cause = str(actor.death_cause)[:300]
        out.append(ReplicaState(f"embedder-{tag}", actor.state, actor.node_id, cause))
    return out


def list_dead_nodes() -> list[str]:
    from ray.util.state import list_nodes

    nodes = list_nodes(
        address=_gcs_address(),
        filters=[("state", "=", "DEAD")],
        limit=1000,
        raise_on_missing_output=False,
    )
    return [n.node_id for n in nodes]


def _gcs_address() -> str | None:
    """This cluster's address, so other Ray instances on the machine never confuse the API."""
    import ray

    return ray.get_runtime_context().gcs_address if ray.is_initialized() else None
