"""Names shared by processes that must agree on them: deployments and worker ids."""

from __future__ import annotations

INGRESS = "Ingress"
EMBEDDER = "Embedder"

_WORKER_PREFIX = "embedder-"


def worker_id(replica_tag: str) -> str:
    """The stable id of an Embedder replica (heartbeats, `processing_workers`, events).

    `replica_tag` is Serve's unique replica id: `serve.get_replica_context().replica_tag`
    inside the replica, the part after the last `#` of the replica actor's name outside.
    """
    return f"{_WORKER_PREFIX}{replica_tag}"


def replica_tag_of(actor_name: str) -> str | None:
    """The replica tag in a Serve replica actor's name (`SERVE_REPLICA::app#Dep#tag`)."""
    if "#" not in actor_name:
        return None
    return actor_name.rsplit("#", 1)[-1] or None


def replica_class_name(app_name: str, deployment: str) -> str:
    """The Ray actor class name Serve gives the replicas of `deployment` in `app_name`."""
    return f"ServeReplica:{app_name}:{deployment}"
