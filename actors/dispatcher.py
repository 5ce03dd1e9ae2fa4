"""Dispatcher: the named actor that moves queued items through the Embedder into the index."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict

import ray
from ray import serve
from ray.exceptions import RayActorError

from actors import metrics
from actors.index_shard import get_index_shard
from actors.naming import NAMESPACE, dispatcher_name, shard_for
from lumen.config import Settings
from lumen.dispatch import RoundRobin
from lumen.errors import ModelMismatch
from lumen.storage import Stores
from lumen.worker import EmbedResult

log = logging.getLogger(__name__)
_CLAIMER = "dispatcher"


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class Dispatcher:
    """Claims fairly across users, keeps the embedders busy, commits results, retries failures.

    Detached: it outlives the ingress that created it; `POST /reset` never ends it, and the
    launcher's shutdown of Ray (or `ray.kill`) does. State lives in Redis, so a restart loses
    nothing: items it had in flight pass their deadline and are requeued.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stores = Stores(settings)
        self.rr = RoundRobin()
        self.inflight = 0
        self.processed = 0
        self._task: asyncio.Task[None] | None = None
        self._handle = None

    async def ensure_running(self) -> bool:
        if self._task is None or self._task.done():
            if self._task is not None and self._task.exception() is not None:
                log.error("dispatch loop died: %r; restarting", self._task.exception())
            self._task = asyncio.get_running_loop().create_task(self._loop())
        return True

    async def stats(self) -> dict[str, int]:
        return {"inflight": self.inflight, "processed": self.processed}

    def _embedder(self):  # type: ignore[no-untyped-def]
        if self._handle is None:
            handle = serve.get_deployment_handle("Embedder", self.settings.app_name)
            self._handle = handle.options(method_name="embed_items")
        return self._handle

    async def _loop(self) -> None:
        q = self.settings.queue
        capacity = q.dispatch_batch_size * q.max_inflight_batches
        last_sweep = 0.0
        while True:
            try:
                if time.monotonic() - last_sweep >= 1.0:
                    last_sweep = time.monotonic()
                    await asyncio.to_thread(self._requeue_expired)
                free = capacity - self.inflight
                if free > 0:
                    claimed = await asyncio.to_thread(self._claim, free)
                    for user, items in claimed:
                        self.inflight += len(items)
                        asyncio.get_running_loop().create_task(self._process(user, items))
            except Exception:  # noqa: BLE001 - Redis restarting, Serve redeploying: go on
                log.exception("dispatch round failed")
                await asyncio.sleep(1.0)
            await asyncio.sleep(q.poll_interval_s)

    def _claim(self, free: int) -> list[tuple[str, list[str]]]:
        q = self.settings.queue
        users = self.stores.queue.active_users()
        depth = self.stores.queue.depth()
        for state, n in depth.items():
            metrics.queue_depth().set(n, tags={"state": state})
        out = []
        for user, n in self.rr.plan(users, free, q.dispatch_batch_size):
            items = self.stores.queue.claim(user, n, _CLAIMER, q.task_timeout_s)
            if items:
                out.append((user, items))
        return out

    def _requeue_expired(self) -> None:
        for r in self.stores.queue.requeue_expired(self.settings.queue.max_retries):
            if r.state == "gone":
                continue
            metrics.items_failed().inc(tags={"kind": "timeout"})
            self.stores.events.record("task_timeout", user=r.user, item=r.item, state=r.state)
            if r.state == "error":
                self.stores.events.record(
                    "item_failed", user=r.user, item=r.item, reason="task timed out"
                )

    async def _process(self, user: str, items: list[str]) -> None:
        try:
            try:
                results = await self._embedder().remote(user, items)
            except RayActorError:  # the replica died with the whole chunk
                await asyncio.to_thread(self._requeue_dead, user, items)
                return
            except Exception as exc:  # noqa: BLE001 - any other call failure: retry later
                reason = f"embedder call failed: {exc!r}"[:500]
                await asyncio.to_thread(self._fail, user, [(i, reason, False) for i in items])
                return
            ok = [r for r in results if r.error is None]
            failed = [(r.item, r.error[:500], r.permanent) for r in results if r.error is not None]
            if ok:
                await self._commit(user, ok)
            if failed:
                await asyncio.to_thread(self._fail, user, failed)
        except Exception:  # noqa: BLE001 - the deadline requeues whatever was lost here
            log.exception("processing a batch for %s failed", user)
        finally:
            self.inflight -= len(items)

    async def _commit(self, user: str, results: list[EmbedResult]) -> None:
        shard = get_index_shard(self.settings, shard_for(user, self.settings.queue.index_shards))
        by_model: dict[tuple[str, int], list[EmbedResult]] = defaultdict(list)
        for r in results:  # one model normally; two while a redeploy rolls replicas over
            by_model[(r.model_id, r.dim)].append(r)
        for (model_id, dim), group in by_model.items():
            rows = [(r.item, r.vector, r.caption) for r in group if r.vector is not None]
            try:
                committed = await shard.commit.remote(user, model_id, dim, rows)
            except ModelMismatch as exc:  # retrying cannot help: the items error out with why
                failed = [(r.item, exc.message[:500], True) for r in group]
                await asyncio.to_thread(self._fail, user, failed)
                continue
            self.processed += len(committed)
            if committed:
                metrics.items_done().inc(len(committed))

    def _fail(self, user: str, failed: list[tuple[str, str, bool]]) -> None:
        q = self.stores.queue
        transient = [(user, item, reason) for item, reason, permanent in failed if not permanent]
        permanent = [(user, item, reason) for item, reason, permanent in failed if permanent]
        states = q.fail(transient, self.settings.queue.max_retries) + q.fail(permanent, -1)
        if transient:
            metrics.items_failed().inc(len(transient), tags={"kind": "transient"})
        if permanent:
            metrics.items_failed().inc(len(permanent), tags={"kind": "permanent"})
        for (u, item, reason), state in zip(transient + permanent, states, strict=True):
            if state == "error":
                self.stores.events.record("item_failed", user=u, item=item, reason=reason)

    def _requeue_dead(self, user: str, items: list[str]) -> None:
        workers = self.stores.queue.workers_of(user, items)
        by_worker: dict[str, list[str]] = defaultdict(list)
        for item in items:
            by_worker[workers.get(item, "unknown")].append(item)
        states = self.stores.queue.fail(
            [(user, i, "worker died") for i in items], self.settings.queue.max_retries
        )
        requeued = {i for i, s in zip(items, states, strict=True) if s == "queued"}
        metrics.items_failed().inc(len(items), tags={"kind": "worker_dead"})
        for worker, its in by_worker.items():
            self.stores.events.record(
                "worker_dead",
                worker=worker,
                user=user,
                requeued=[i for i in its if i in requeued],
            )


def get_dispatcher(settings: Settings) -> ray.actor.ActorHandle:
    return Dispatcher.options(  # type: ignore[attr-defined]
        name=dispatcher_name(settings.app_name),
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        resources=settings.actor_resources,
    ).remote(settings)
