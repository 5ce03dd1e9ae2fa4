"""Monitor events (capped, newest first) and worker heartbeats in Redis."""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from lumen.keys import Keys
from lumen.storage.text import text


class EventStore:
    """A capped list of JSON events, newest first."""

    def __init__(self, client: redis.Redis, keys: Keys, cap: int) -> None:
        self._r = client
        self._k = keys
        self._cap = cap

    def record(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"ts": int(time.time()), "type": kind, **fields}
        pipe = self._r.pipeline(transaction=True)
        pipe.lpush(self._k.events, json.dumps(event))
        pipe.ltrim(self._k.events, 0, self._cap - 1)
        pipe.execute()
        return event

    def list(self, limit: int | None = None) -> list[dict[str, Any]]:
        end = -1 if limit is None else limit - 1
        return [json.loads(raw) for raw in self._r.lrange(self._k.events, 0, end)]

    def reset(self) -> None:
        self._r.delete(self._k.events)


class HeartbeatStore:
    """Each worker's latest metrics, keyed by its stable id."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self._r = client
        self._k = keys

    def beat(self, worker: str, metrics: dict[str, Any]) -> None:
        self._r.hset(self._k.heartbeat, worker, json.dumps(metrics))

    def all(self) -> dict[str, dict[str, Any]]:
        raw = self._r.hgetall(self._k.heartbeat)
        return {text(k): json.loads(v) for k, v in dict(raw).items()}

    def forget(self, workers: list[str]) -> None:
        if workers:
            self._r.hdel(self._k.heartbeat, *workers)
