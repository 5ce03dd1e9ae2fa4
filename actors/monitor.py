"""Monitor: the one actor that polls Ray's state API; HTTP requests read its cache."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import ray

from actors.naming import monitor_name, named_actor
from lumen.config import Settings
from lumen.health import WorkerBook, list_embedder_replicas, list_node_exits
from lumen.storage import Stores

log = logging.getLogger(__name__)


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class Monitor:
    """Polls replica liveness on a schedule, joins heartbeats, records death events.

    Detached: ended when Ray shuts down. Its cache is rebuilt on the first poll after a
    restart; events live in Redis.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stores = Stores(settings)
        m = settings.monitor
        self.book = WorkerBook(stale_after_s=m.stale_after_s, dead_ttl_s=m.dead_ttl_s)
        self.known_dead_nodes: set[str] | None = None
        self._task: asyncio.Task[None] | None = None

    async def ensure_running(self) -> bool:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop())
        return True

    async def workers(self) -> dict[str, dict[str, Any]]:
        return self.book.last

    async def _loop(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self._poll)
            except Exception:  # noqa: BLE001 - the state API can be briefly unavailable
                log.exception("monitor poll failed")
            await asyncio.sleep(self.settings.monitor.poll_interval_s)

    def _poll(self) -> None:
        replicas = list_embedder_replicas(self.settings.app_name)
        changes = self.book.observe(replicas, self.stores.heartbeats.all())
        for kind, fields in changes.events():
            self.stores.events.record(kind, **fields)
        exits = {n.node_id: n for n in list_node_exits()}
        if self.known_dead_nodes is not None:
            for node in sorted(set(exits) - self.known_dead_nodes):
                kind, fields = exits[node].event()
                self.stores.events.record(kind, **fields)
        self.known_dead_nodes = set(exits)


def get_monitor(settings: Settings) -> ray.actor.ActorHandle:
    return named_actor(Monitor, monitor_name(settings.app_name), settings)
