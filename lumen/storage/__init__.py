"""Redis storage: the only code that talks to Redis; the source of truth for everything."""

from __future__ import annotations

from typing import Any

import redis
from redis.exceptions import RedisClusterException

from lumen.config import Settings
from lumen.keys import Keys
from lumen.storage.client import Client
from lumen.storage.events import EventStore, HeartbeatStore
from lumen.storage.queue import QueueStatus, QueueStore, Usage
from lumen.storage.reindex import SpaceStore
from lumen.storage.users import UserStore
from lumen.storage.vectors import VectorStore

__all__ = [
    "REDIS_ERRORS",
    "Client",
    "EventStore",
    "HeartbeatStore",
    "QueueStatus",
    "QueueStore",
    "SpaceStore",
    "Stores",
    "Usage",
    "UserStore",
    "VectorStore",
    "cluster_url",
    "connect",
]


# What a store call raises when Redis is unreachable or refuses: the cluster client's own
# "no reachable node" errors are not `RedisError`s.
REDIS_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, RedisClusterException)

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def cluster_url(url: str, cluster: bool = False) -> tuple[str, bool]:
    """(the URL redis-py understands, whether it names a Redis Cluster).

    A `redis+cluster://` or `rediss+cluster://` URL names a cluster, as does `cluster=True`
    (the `redis.cluster` setting) with a plain `redis://` URL.
    """
    scheme, sep, rest = url.partition("://")
    if sep and scheme.lower() in CLUSTER_SCHEMES:
        return f"{CLUSTER_SCHEMES[scheme.lower()]}://{rest}", True
    return url, cluster


def connect(url: str, cluster: bool = False, **overrides: Any) -> Client:
    """A client that retries briefly on connection errors (Redis may be restarting).

    One code path for both: a `redis.Redis`, or a `redis.cluster.RedisCluster` when the URL
    or `cluster` says so; the stores use only what both offer (see `lumen.keys`).
    """
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    url, is_cluster = cluster_url(url, cluster)
    options: dict[str, Any] = {
        "socket_timeout": 30,
        "socket_connect_timeout": 5,
        "health_check_interval": 15,
        "retry": Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=20),
        "retry_on_error": [redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError],
        **overrides,
    }
    if is_cluster:
        from redis.cluster import RedisCluster

        return RedisCluster.from_url(url, **options)
    return redis.Redis.from_url(url, **options)


class Stores:
    """All stores over one connection, built from settings."""

    def __init__(self, settings: Settings, client: Client | None = None) -> None:
        self.redis = client or connect(settings.redis.url, settings.redis.cluster)
        keys = Keys(settings.redis.namespace)
        self.keys = keys
        self.users = UserStore(self.redis, keys)
        self.queue = QueueStore(self.redis, keys, shards=settings.queue.dispatchers)
        self.vectors = VectorStore(self.redis, keys)
        self.spaces = SpaceStore(self.redis, keys)
        self.events = EventStore(self.redis, keys, cap=settings.monitor.max_events)
        self.heartbeats = HeartbeatStore(self.redis, keys, ttl_s=settings.monitor.dead_ttl_s)

    def ping(self) -> bool:
        try:
            return bool(self.redis.ping())
        except REDIS_ERRORS:
            return False
