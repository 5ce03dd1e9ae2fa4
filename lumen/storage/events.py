"""Monitor events (capped, newest first) and worker heartbeats in Redis."""

from __future__ import annotations

import json
import time
from typing import Any

from lumen.events import EventKind
from lumen.keys import Keys
from lumen.storage.client import Client
from lumen.storage.text import text


class EventStore:
    """A capped list of JSON events, newest first."""

    def __init__(self, client: Client, keys: Keys, cap: int) -> None:
        self._r = client
        self._k = keys
        self._cap = cap

    def record(self, kind: EventKind, **fields: Any) -> dict[str, Any]:
        """Append an event; its `type` on the wire is the kind's string value."""
        event = {"ts": int(time.time()), "type": str(kind), **fields}
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


# KEYS: heartbeat hash. ARGV: worker, metrics JSON, cutoff (epoch s), ttl (s).
# Writes one beat, drops every beat older than the cutoff (or without a readable `ts`) and
# lets the whole hash expire `ttl` after the last beat, so gone workers disappear by
# themselves, even when no worker is left to beat.
_BEAT = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local cutoff = tonumber(ARGV[3])
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local ok, beat = pcall(cjson.decode, all[i + 1])
  local ts = nil
  if ok and type(beat) == 'table' then ts = tonumber(beat['ts']) end
  if ts == nil or ts < cutoff then redis.call('HDEL', KEYS[1], all[i]) end
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""


class HeartbeatStore:
    """Each worker's latest metrics, keyed by its stable id; beats expire after `ttl_s`."""

    def __init__(self, client: Client, keys: Keys, ttl_s: float = 600.0) -> None:
        self._r = client
        self._k = keys
        self._ttl_s = max(1, int(ttl_s))
        self._beat = client.register_script(_BEAT)

    def beat(self, worker: str, metrics: dict[str, Any], now: float | None = None) -> None:
        """Store `worker`'s metrics (with `ts`, added when missing) and prune old beats."""
        now = time.time() if now is None else now
        beat = {**metrics, "ts": metrics.get("ts", int(now))}
        self._beat(
            keys=[self._k.heartbeat],
            args=[worker, json.dumps(beat), now - self._ttl_s, self._ttl_s],
        )

    def all(self) -> dict[str, dict[str, Any]]:
        raw = self._r.hgetall(self._k.heartbeat)
        return {text(k): json.loads(v) for k, v in dict(raw).items()}
