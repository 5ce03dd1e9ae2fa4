"""Dispatcher: the named actor that runs `DispatchCore` against Serve and the index shards."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Sequence

import ray
from ray import serve
from ray.exceptions import RayActorError

from actors.index_shard import get_index_shard
from actors.naming import dispatcher_name, named_actor, shard_for
from lumen.config import Settings
from lumen.dispatch import CommitAnswer, CommitRequest, DispatchCore, Part, WorkerDied
from lumen.health import LiveReplicas
from lumen.metrics import RayMetrics
from lumen.naming import EMBEDDER
from lumen.storage import Stores
from lumen.worker import EmbedResult

log = logging.getLogger(__name__)


class _ServeEmbed:
    """`Embed` through the Embedder deployment; a dead replica becomes `WorkerDied`."""

    def __init__(self, app_name: str) -> None:
        self.handle = serve.get_deployment_handle(EMBEDDER, app_name).options(
            method_name="embed_chunk"
        )

    async def embed(self, parts: list[Part]) -> Sequence[EmbedResult]:
        try:
            return await self.handle.remote(parts)
        except RayActorError as exc:
            raise WorkerDied(str(exc)) from exc


class _ShardCommit:
    """`Commit` through the IndexShard actors: a chunk's users grouped by shard, one
    `commit_many` call per shard, all shards at once (handles looked up once, kept)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.shards: dict[int, ray.actor.ActorHandle] = {}

    async def commit_many(self, requests: list[CommitRequest]) -> list[CommitAnswer]:
        by_shard: dict[int, list[int]] = defaultdict(list)
        for pos, request in enumerate(requests):
            by_shard[shard_for(request[0], self.settings.queue.index_shards)].append(pos)
        answers: list[CommitAnswer] = [AssertionError("not sent")] * len(requests)

        async def send(n: int, positions: list[int]) -> None:
            got: list[CommitAnswer]
            try:
                if n not in self.shards:
                    self.shards[n] = get_index_shard(self.settings, n)
                got = await self.shards[n].commit_many.remote([requests[p] for p in positions])
            except RayActorError as exc:  # killed for good: look it up (and create it) again
                self.shards.pop(n, None)
                got = [exc] * len(positions)
            except Exception as exc:  # noqa: BLE001 - each request answered with why
                got = [exc] * len(positions)
            for p, answer in zip(positions, got, strict=True):
                answers[p] = answer

        await asyncio.gather(*(send(n, positions) for n, positions in by_shard.items()))
        return answers


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class Dispatcher:
    """Moves queued items through the Embedder into the index.

    Detached: it outlives the ingress that created it; `POST /reset` never ends it, and the
    launcher's shutdown of Ray (or `ray.kill`) does. State lives in Redis, so a restart loses
    nothing: items it had in flight pass their deadline and are requeued.
    """

    def __init__(self, settings: Settings, shard: int = 0) -> None:
        stores = Stores(settings)
        shards = settings.queue.dispatchers
        self.queue = stores.queue.for_shard(shard)  # this shard's active users and deadlines
        self.owns = None if shards == 1 else (lambda user: shard_for(user, shards) == shard)
        self.core = DispatchCore(
            settings.queue, self.queue, stores.events,
            _ServeEmbed(settings.app_name), _ShardCommit(settings), RayMetrics(),
            replicas=LiveReplicas(stores.heartbeats, settings.monitor.stale_after_s),
            owns=self.owns,
        )  # fmt: skip
        self._task: asyncio.Task[None] | None = None
        self._adopted = False
        self._adopting: asyncio.Task[None] | None = None

    async def wake(self) -> None:
        """Items were queued or requeued for this shard's users: claim now."""
        await self.ensure_running()
        self.core.wake()

    async def ensure_running(self) -> bool:
        if self._task is None or self._task.done():
            if self._task is not None and not self._task.cancelled() and self._task.exception():
                log.error("dispatch loop died: %r; restarting", self._task.exception())
            self._task = asyncio.get_running_loop().create_task(self._run())
        return True

    async def _run(self) -> None:
        """Dispatch forever; adopt this shard's users once, beside it (see `_adopt`)."""
        if not self._adopted:
            self._adopted = True
            # kept, so the task is not collected while it runs
            self._adopting = asyncio.get_running_loop().create_task(self._adopt())
        await self.core.run()

    async def _adopt(self) -> None:
        """Announce users whose entries in this shard's indexes were lost (a crash between
        a script and its announcement, a changed shard count, the single-Redis layout):
        one SCAN of the keyspace, so it runs beside the dispatch loop, not before it."""
        try:
            n = await asyncio.to_thread(self.queue.adopt, self.owns)
            log.info("dispatcher adopted %d users with queued or processing items", n)
            self.core.wake()
        except Exception:  # noqa: BLE001 - Redis restarting: try again on the next start
            self._adopted = False
            log.exception("adopting this shard's users failed")


def get_dispatcher(settings: Settings, shard: int = 0) -> ray.actor.ActorHandle:
    """Dispatcher shard `shard` (users hash to shards as to index shards, by crc32)."""
    return named_actor(Dispatcher, dispatcher_name(settings.app_name, shard), settings, shard)
