"""Names of the named actors: one function per actor kind, one Ray namespace for all."""

from __future__ import annotations

import zlib

NAMESPACE = "lumen"


def dispatcher_name(app_name: str) -> str:
    return f"{app_name}:dispatcher"


def monitor_name(app_name: str) -> str:
    return f"{app_name}:monitor"


def index_shard_name(app_name: str, shard: int) -> str:
    return f"{app_name}:index-shard-{shard}"


def shard_for(user: str, shards: int) -> int:
    """Stable user -> shard mapping (crc32: the same in every process, unlike hash())."""
    return zlib.crc32(user.encode()) % shards
