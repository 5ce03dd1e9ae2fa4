"""Redis storage: the only code that talks to Redis; the source of truth for everything."""

from __future__ import annotations

import redis

from lumen.config import Settings
from lumen.keys import Keys
from lumen.storage.events import EventStore, HeartbeatStore
from lumen.storage.queue import QueueStatus, QueueStore, Usage
from lumen.storage.users import UserStore
from lumen.storage.vectors import VectorStore

__all__ = [
    "EventStore",
    "HeartbeatStore",
    "QueueStatus",
    "QueueStore",
    "Stores",
    "Usage",
    "UserStore",
    "VectorStore",
    "connect",
]


def connect(url: str) -> redis.Redis:
    """A client that retries briefly on connection errors (Redis may be restarting)."""
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(
        url,
        socket_timeout=30,
        socket_connect_timeout=5,
        health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=20),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError],
    )


class Stores:
    """All stores over one connection, built from settings."""

    def __init__(self, settings: Settings, client: redis.Redis | None = None) -> None:
        self.redis = client or connect(settings.redis.url)
        keys = Keys(settings.redis.namespace)
        self.keys = keys
        self.users = UserStore(self.redis, keys)
        self.queue = QueueStore(self.redis, keys)
        self.vectors = VectorStore(self.redis, keys)
        self.events = EventStore(self.redis, keys, cap=settings.monitor.max_events)
        self.heartbeats = HeartbeatStore(self.redis, keys, ttl_s=settings.monitor.dead_ttl_s)

    def ping(self) -> bool:
        try:
            return bool(self.redis.ping())
        except redis.RedisError:
            return False
