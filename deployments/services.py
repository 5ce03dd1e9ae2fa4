"""What one ingress replica is wired to: stores, core services, cached actor handles.

Built once per replica in `Ingress.__init__` and kept on `app.state.services`; routes reach
it through `deps.Svc`. The background actors are supervised here, off the request path.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np
import ray
from ray.exceptions import RayActorError

from actors.dispatcher import get_dispatcher
from actors.index_shard import get_index_shard
from actors.monitor import get_monitor
from actors.naming import NAMESPACE, index_shard_number, shard_for
from actors.reembedder import get_reembedder
from deployments.probes import ReadinessProbe
from lumen.account import AccountService
from lumen.admission import Admission, PenaltyBox, Tarpit
from lumen.answerer import make_answerer
from lumen.auth import Authenticator
from lumen.config import Settings
from lumen.embedding import model_id_for
from lumen.errors import Unauthorized
from lumen.executors import Executors
from lumen.links import ImageLinks
from lumen.metrics import RayMetrics
from lumen.search import SearchHit, SearchService
from lumen.storage import Stores
from lumen.upgrade import upgrade_pending
from lumen.uploads import UploadService

log = logging.getLogger(__name__)

SUPERVISE_INTERVAL_S = 2.0
RETIRED_SHARDS_EVERY = 15  # ticks: shards past a lowered shard count are looked for each 30 s


class ServeEncoder:
    """`lumen.search.Encoder` through the Embedder deployment handle."""

    def __init__(self, embedder: Any) -> None:
        self.embedder = embedder

    async def embed_text(self, text: str, model: str | None = None) -> np.ndarray:
        return np.frombuffer(await self.embedder.embed_text.remote(text, model), dtype="<f4")

    async def embed_image(self, data: bytes, model: str | None = None) -> np.ndarray:
        vector = await self.embedder.embed_image_bytes.remote(data, model)
        return np.frombuffer(vector, dtype="<f4")


class ShardClient:
    """`Index` and `SpaceCache` through one IndexShard actor handle."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def search(
        self, user: str, query: bytes, k: int, model: str | None = None, text: str | None = None
    ) -> list[SearchHit]:
        return await self.handle.search.remote(user, query, k, model, text)

    async def search_pdf(
        self, user: str, query: bytes, text: str, k: int, mode: str, model: str | None = None
    ) -> list[SearchHit]:
        return await self.handle.search_pdf.remote(user, query, text, k, mode, model)

    async def drop(self, user: str) -> None:
        await self.handle.drop.remote(user)


class ActorHandles:
    """Handles to the named actors, looked up once and kept (they survive actor restarts)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._shards: dict[int, ShardClient] = {}
        self._dispatchers: dict[int, Any] = {}
        self._monitor: Any = None

    def shard(self, user: str) -> ShardClient:
        return self.shard_n(shard_for(user, self.settings.queue.index_shards))

    def shard_n(self, n: int) -> ShardClient:
        if n not in self._shards:
            self._shards[n] = ShardClient(get_index_shard(self.settings, n))
        return self._shards[n]

    def dispatcher(self, n: int = 0) -> Any:
        if n not in self._dispatchers:
            self._dispatchers[n] = get_dispatcher(self.settings, n)
        return self._dispatchers[n]

    def dispatcher_of(self, user: str) -> Any:
        return self.dispatcher(shard_for(user, self.settings.queue.dispatchers))

    def dispatchers(self) -> list[Any]:
        return [self.dispatcher(n) for n in range(self.settings.queue.dispatchers)]

    def monitor(self) -> Any:
        if self._monitor is None:
            self._monitor = get_monitor(self.settings)
        return self._monitor

    async def converge_shards(self) -> None:
        """Every shard checks its users' mirrors against Redis (repairs within seconds),
        releases the users it no longer owns under the shard count and writes due snapshots."""
        shards = self.settings.queue.index_shards
        for n in range(shards):
            await self.shard_n(n).handle.converge.remote(shards)

    async def release_retired_shards(self) -> None:
        """Shards numbered past the shard count (it was lowered) release every space."""
        shards = self.settings.queue.index_shards
        named = await asyncio.to_thread(ray.util.list_named_actors, True)
        for entry in named:
            n = index_shard_number(self.settings.app_name, entry["name"])
            if entry["namespace"] == NAMESPACE and n is not None and n >= shards:
                actor = ray.get_actor(entry["name"], namespace=NAMESPACE)
                await actor.converge.remote(shards)

    async def shard_stats(self, timeout_s: float) -> list[dict[str, Any]]:
        """Each shard's memory and spaces; a shard busy past `timeout_s` says so."""

        async def one(n: int) -> dict[str, Any]:
            try:
                return dict(
                    await asyncio.wait_for(self.shard_n(n).handle.stats.remote(), timeout_s)
                )
            except TimeoutError:
                return {"shard": n, "status": "busy"}
            except Exception as exc:  # noqa: BLE001 - a restarting shard is reported, not raised
                return {"shard": n, "status": "unreachable", "error": type(exc).__name__}

        return list(
            await asyncio.gather(*(one(n) for n in range(self.settings.queue.index_shards)))
        )

    async def start_reindex_if_pending(self, stores: Stores) -> bool:
        """Start re-embedding when a space holds another model than the deployed one; no
        actor is created (nothing held) otherwise."""
        settings = self.settings
        if not settings.reindex.auto_start or settings.model.benchmark_null:
            return False
        deployed = model_id_for(settings.model)
        if not await asyncio.to_thread(upgrade_pending, stores.spaces, deployed):
            return False
        await self.reembedder().start.remote(settings.model.model_dump(mode="json"))
        log.info("re-embedding started: spaces hold another model than %s", deployed)
        return True

    def reembedder(self) -> Any:
        return get_reembedder(self.settings)

    def forget(self) -> None:
        """Look every actor up again (one was killed for good and created anew)."""
        self._shards.clear()
        self._dispatchers.clear()
        self._monitor = None


class Supervisor:
    """Keeps the dispatcher's and monitor's loops running; the one place that does. On its
    first tick it starts the re-embedding job if an upgrade is pending (and nothing if not)."""

    def __init__(self, handles: ActorHandles, stores: Stores | None = None) -> None:
        self.handles = handles
        self.stores = stores
        self.upgrade_checked = False
        self.task: asyncio.Task[None] | None = None
        self.kicks: set[asyncio.Task[None]] = set()

    def ensure_started(self) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._watch())

    def kick_soon(self, user: str) -> None:
        """`kick` without waiting for it (from a callback on the loop); the task is kept."""
        task = asyncio.get_running_loop().create_task(self.kick(user))
        self.kicks.add(task)
        task.add_done_callback(self.kicks.discard)

    async def kick(self, user: str) -> None:
        """Wake the user's dispatcher: work was queued (an upload, a retry)."""
        try:
            await self.handles.dispatcher_of(user).wake.remote()
        except Exception:  # noqa: BLE001 - restarting: its idle check finds the work
            log.warning("dispatcher not reachable", exc_info=True)

    async def _watch(self) -> None:
        ticks = 0
        while True:
            try:
                for dispatcher in self.handles.dispatchers():
                    await dispatcher.ensure_running.remote()
                await self.handles.monitor().ensure_running.remote()
                await self.handles.converge_shards()
                if not self.upgrade_checked and self.stores is not None:
                    await self.handles.start_reindex_if_pending(self.stores)
                    self.upgrade_checked = True
                if ticks % RETIRED_SHARDS_EVERY == 0:
                    await self.handles.release_retired_shards()
                ticks += 1
            except RayActorError:
                self.handles.forget()
            except Exception:  # noqa: BLE001 - an actor restarting: try again shortly
                log.warning("background actors not reachable yet", exc_info=True)
            await asyncio.sleep(SUPERVISE_INTERVAL_S)


class Services:
    """Built once per ingress replica; every route reaches the system through it."""

    def __init__(self, settings: Settings, embedder: Any) -> None:
        self.settings = settings
        self.stores = Stores(settings)
        self.auth = Authenticator(settings.auth, self.stores.users)
        self.links = ImageLinks.from_settings(settings.auth)
        self.admission = Admission(settings.admission)
        self.penalties = PenaltyBox()
        self.tarpit = Tarpit(settings.admission.refusal_delay_s, settings.admission.tarpit_max_held)
        self.executors = Executors(settings.executors)
        self.uploads = UploadService(settings, self.stores.queue)
        self.actors = ActorHandles(settings)
        self.supervisor = Supervisor(self.actors, self.stores)
        self.readiness = ReadinessProbe(settings, self.stores, self.actors)
        self.search = SearchService(
            settings.data_dir, ServeEncoder(embedder), self.actors.shard, self.stores.queue,
            make_answerer(settings.gemini), RayMetrics(),
            run_answer=self.executors.gemini.run, run_io=self.executors.blocking.run,
            model_of=self.active_model,
        )  # fmt: skip
        self.account = AccountService(
            settings.data_dir, self.stores.queue, self.actors.shard,
            settings.limits.max_status_items, self.auth.revoke_streams,
        )  # fmt: skip

    def active_model(self, user: str) -> str | None:
        """The model of the user's active space (None: nothing indexed yet)."""
        info = self.stores.vectors.info(user)
        return None if info is None else info.model

    async def verify_bearer(self, authorization: str) -> str:
        """The user an `Authorization: Bearer` header names (401 otherwise), off the loop."""
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("not authenticated: send 'Authorization: Bearer <token>'")
        return await self.executors.blocking.run(self.auth.verify, token.strip())
