"""Names of the named actors and the one factory that creates or finds them."""

from __future__ import annotations

from typing import Any

import ray

from lumen.config import Settings
from lumen.keys import shard_of

NAMESPACE = "lumen"


def dispatcher_name(app_name: str, shard: int = 0) -> str:
    return f"{app_name}:dispatcher" if shard == 0 else f"{app_name}:dispatcher-{shard}"


def monitor_name(app_name: str) -> str:
    return f"{app_name}:monitor"


def reembedder_name(app_name: str) -> str:
    return f"{app_name}:reembedder"


def index_shard_name(app_name: str, shard: int) -> str:
    return f"{app_name}:index-shard-{shard}"


def index_shard_number(app_name: str, name: str) -> int | None:
    """The shard number in an IndexShard's actor name, or None for any other name."""
    prefix = f"{app_name}:index-shard-"
    tail = name[len(prefix) :] if name.startswith(prefix) else ""
    return int(tail) if tail.isdigit() else None


def shard_for(user: str, shards: int) -> int:
    """Stable user -> shard mapping (crc32: the same in every process, unlike hash()); the
    same as `lumen.keys.shard_of`, which the queue's per-shard indexes use."""
    return shard_of(user, shards)


def named_actor(
    actor_class: Any,
    name: str,
    settings: Settings,
    *args: Any,
    options: dict[str, Any] | None = None,
) -> ray.actor.ActorHandle:
    """The detached actor called `name`, created on first use (every caller may race here).

    `options` add to or replace Ray's actor options (placement, resources)."""
    return actor_class.options(
        **{
            "name": name,
            "namespace": NAMESPACE,
            "lifetime": "detached",
            "get_if_exists": True,
            "resources": settings.actor_resources,
            **(options or {}),
        }
    ).remote(settings, *args)
