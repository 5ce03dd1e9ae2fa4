"""Events and heartbeats against a real redis-server (no Ray)."""

from __future__ import annotations

import json
import uuid

import pytest
import redis

from lumen.events import EventKind
from lumen.keys import Keys
from lumen.storage.events import EventStore, HeartbeatStore
from tests.conftest import RedisServer


@pytest.fixture
def client(redis_server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(redis_server.url)


@pytest.fixture
def keys() -> Keys:
    return Keys(f"ev{uuid.uuid4().hex[:8]}")


def test_an_event_kind_is_stored_as_its_plain_string(client: redis.Redis, keys: Keys) -> None:
    events = EventStore(client, keys, cap=10)
    events.record(EventKind.REPLICA_STOPPED, worker="embedder-a", cause="stopped")
    [raw] = client.lrange(keys.events, 0, -1)
    assert json.loads(raw)["type"] == "replica_stopped"
    assert events.list()[0]["worker"] == "embedder-a"


def test_the_event_list_keeps_only_the_newest_cap(client: redis.Redis, keys: Keys) -> None:
    events = EventStore(client, keys, cap=3)
    for i in range(5):
        events.record(EventKind.NODE_DEAD, node_id=f"n{i}")
    assert [e["node_id"] for e in events.list()] == ["n4", "n3", "n2"]


def test_a_beat_prunes_workers_that_have_not_beaten_within_the_ttl(
    client: redis.Redis, keys: Keys
) -> None:
    beats = HeartbeatStore(client, keys, ttl_s=60)
    beats.beat("embedder-old", {"cpu": 1.0, "ts": 1000}, now=1000)
    beats.beat("embedder-new", {"cpu": 2.0, "ts": 1050}, now=1050)
    assert set(beats.all()) == {"embedder-old", "embedder-new"}
    beats.beat("embedder-new", {"cpu": 3.0, "ts": 1070}, now=1070)
    assert beats.all() == {"embedder-new": {"cpu": 3.0, "ts": 1070}}


def test_the_heartbeat_hash_expires_when_no_worker_is_left(client: redis.Redis, keys: Keys) -> None:
    beats = HeartbeatStore(client, keys, ttl_s=60)
    beats.beat("embedder-a", {"cpu": 1.0})
    assert 0 < client.ttl(keys.heartbeat) <= 60
    assert beats.all()["embedder-a"]["ts"] > 0  # a beat without `ts` gets one


def test_a_beat_that_cannot_be_read_is_dropped(client: redis.Redis, keys: Keys) -> None:
    client.hset(keys.heartbeat, "embedder-garbage", "not json")
    HeartbeatStore(client, keys, ttl_s=60).beat("embedder-a", {"ts": 5000}, now=5000)
    assert client.hkeys(keys.heartbeat) == [b"embedder-a"]
