"""The Redis client type the stores take: a single Redis or a Redis Cluster."""

from __future__ import annotations

from typing import TypeAlias

import redis
from redis.cluster import RedisCluster

Client: TypeAlias = redis.Redis | RedisCluster
