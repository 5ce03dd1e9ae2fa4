"""The facts behind readiness, gathered by an ingress replica: Serve's status and pings.

`lumen.readiness` decides what they mean. Serve's status is one call to its controller,
cached for a second and shared by `/readyz` and every `/status` stream of this replica.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any

from lumen.config import Settings
from lumen.naming import EMBEDDER
from lumen.readiness import EmbedderState, Readiness, embedder_state
from lumen.storage import Stores

log = logging.getLogger(__name__)

CACHE_S = 1.0
PING_TIMEOUT_S = 5.0


def serve_deployment_status(app_name: str, deployment: str) -> dict[str, Any] | None:
    """One deployment's status overview as a plain dict, or None when it is not deployed."""
    from ray import serve

    app = serve.status().applications.get(app_name)
    found = None if app is None else app.deployments.get(deployment)
    if found is None:
        return None
    out = dataclasses.asdict(found)
    out["status"] = getattr(found.status, "value", found.status)
    out["replica_states"] = {
        str(getattr(k, "value", k)): int(v) for k, v in (found.replica_states or {}).items()
    }
    return out


class ReadinessProbe:
    """Asks Serve, the dispatchers, the shards and Redis whether work would get done."""

    def __init__(self, settings: Settings, stores: Stores, actors: Any) -> None:
        self.settings = settings
        self.stores = stores
        self.actors = actors
        self._embedder: EmbedderState | None = None
        self._embedder_at = 0.0
        self._lock = asyncio.Lock()

    async def embedder(self) -> EmbedderState:
        async with self._lock:
            if self._embedder is None or time.monotonic() - self._embedder_at > CACHE_S:
                try:
                    found = await asyncio.to_thread(
                        serve_deployment_status, self.settings.app_name, EMBEDDER
                    )
                    self._embedder = embedder_state(found)
                except Exception as exc:  # noqa: BLE001 - the controller restarting
                    log.warning("serve status unavailable: %r", exc)
                    self._embedder = EmbedderState(
                        deployed=True, status="UNKNOWN", message="Serve's controller is restarting"
                    )
                self._embedder_at = time.monotonic()
            return self._embedder

    async def check(self) -> Readiness:
        q = self.settings.queue
        dispatchers = [self._answers(lambda n=n: self.actors.dispatcher(n).ensure_running)
                       for n in range(q.dispatchers)]  # fmt: skip
        shards = [self._answers(lambda n=n: self.actors.shard_n(n).handle.ping)
                  for n in range(q.index_shards)]  # fmt: skip
        redis_ok, embedder, *answers = await asyncio.gather(
            asyncio.to_thread(self.stores.ping), self.embedder(), *dispatchers, *shards
        )
        return Readiness(
            redis=bool(redis_ok),
            dispatchers=tuple(answers[: q.dispatchers]),
            shards=tuple(answers[q.dispatchers :]),
            embedder=embedder,
        )

    async def _answers(self, method: Any) -> bool:
        try:
            return bool(await asyncio.wait_for(method().remote(), PING_TIMEOUT_S))
        except Exception:  # noqa: BLE001 - not answering, for whatever reason
            return False
