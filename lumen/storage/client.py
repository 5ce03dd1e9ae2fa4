"""The Redis client type the stores take: a single Redis or a Redis Cluster."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeAlias

import redis
from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.exceptions import NoScriptError

Client: TypeAlias = redis.Redis | RedisCluster
ScriptCall: TypeAlias = tuple[Script, Sequence[Any], Sequence[Any]]  # script, keys, args


def run_scripts(client: Client, calls: Sequence[ScriptCall]) -> list[Any]:
    """Run each (script, keys, args) in one pipeline; the answers, in order.

    Not a transaction: on a single Redis the scripts run in order in one round trip; on a
    cluster redis-py sends each node its own (each script's keys are one slot). A script
    the node does not hold yet (a restarted Redis, a new node) did not run: it is sent again
    alone, which loads it. Any other error is raised (after redis-py's own retries; a resent
    script must be idempotent, as every script of `lumen.storage.scripts` is).
    """
    if not calls:
        return []
    pipe = client.pipeline(transaction=False)
    for script, keys, args in calls:
        pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)  # cluster: not blocked
    answers = list(pipe.execute(raise_on_error=False))
    for pos, answer in enumerate(answers):
        if isinstance(answer, NoScriptError):
            script, keys, args = calls[pos]
            answers[pos] = script(keys=list(keys), args=list(args))
        elif isinstance(answer, Exception):
            raise answer
    return answers
