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


def index_shard_name(app_name: str, shard: int) -> str:
    return f"{app_name}:index-shard-{shard}"


def shard_for(user: str, shards: int) -> int:
    """Stable user -> shard mapping (crc32: the same in every process, unlike hash()); the
    same as `lumen.keys.shard_of`, which the queue's per-shard indexes use."""
    return shard_of(user, shards)


def named_actor(
    actor_class: Any, name: str, settings: Settings, *args: Any
) -> ray.actor.ActorHandle:
    """The detached actor called `name`, created on first use (every caller may race here)."""
    return actor_class.options(
        name=name,
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        resources=settings.actor_resources,
    ).remote(settings, *args)
