"""IndexShard: named actors, each holding the FAISS indexes of the users hashed to it."""

from __future__ import annotations

import os
import socket
from typing import Any

import numpy as np
import ray

from actors.naming import index_shard_name, named_actor, shard_for
from lumen.config import Settings
from lumen.dispatch import Alt, CommitAnswer, CommitRequest, Rows
from lumen.errors import ModelMismatch
from lumen.events import EventKind
from lumen.metrics import RayMetrics, RayShardMetrics
from lumen.search import SearchHit
from lumen.snapshots import SnapshotStore
from lumen.spaces import SpaceRegistry
from lumen.storage import Stores
from lumen.upgrade import Vectors, commit_versions_many
from lumen.vectors import decode_vectors


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class IndexShard:
    """Commits vectors to Redis (the truth) and mirrors them in FAISS; serves searches.

    Detached: ended only when Ray shuts down or an operator kills it; a restarted shard
    loads each user's index on first use (from its snapshot, or rebuilt from Redis). Calls
    are serialised (one at a time), so a commit and a reset of the same user never
    interleave, and a snapshot is never written while its index changes.
    """

    def __init__(self, settings: Settings, shard: int = 0) -> None:
        self.shard = shard
        self.shards = settings.queue.index_shards
        self.stores = Stores(settings)
        snapshots = None
        if settings.index.snapshots:
            snapshots = SnapshotStore(
                settings.data_dir / "snapshots",
                settings.redis.namespace,
                settings.limits.min_free_bytes,
            )
        self.registry = SpaceRegistry(
            settings, self.stores, on_repair=self._repaired,
            snapshots=snapshots, metrics=RayShardMetrics(shard),
        )  # fmt: skip
        self.metrics = RayMetrics()

    def _repaired(self, user: str, mirrored: int, stored: int) -> None:
        self.metrics.index_repairs(1)
        self.stores.events.record(
            EventKind.INDEX_REPAIRED, user=user, mirrored=mirrored, stored=stored
        )

    def ping(self) -> bool:
        """Readiness: the shard answers (after whatever call it is serving now)."""
        return True

    def owns(self, user: str) -> bool:
        return shard_for(user, self.shards) == self.shard

    def converge(self, shards: int | None = None) -> int:
        """The supervisor's tick: check loaded mirrors against Redis, release users another
        shard owns now (`shards`: the shard count the caller routes by), write due snapshots.
        Returns the number of repairs."""
        if shards is not None and shards > 0 and shards != self.shards:
            self.shards = shards
        self.registry.release_unowned(self.owns)
        repaired = len(self.registry.converge_all())
        self.registry.flush()
        return repaired

    def commit(
        self, user: str, model_id: str, dim: int, rows: Rows, alt: Alt | None = None
    ) -> dict[str, int]:
        """Commit the vectors the user's active space takes (`alt`: a previous model's, while
        an upgrade is in progress; the deployed model's then go to the NEXT space). Rows
        with OCR words mark the words index for a rebuild (the words are the item's: either
        version's commit stores them in `ocr:{u}`)."""
        [answer] = self.commit_many([(user, model_id, dim, rows, alt)])
        if isinstance(answer, ModelMismatch):
            raise answer
        return answer

    def commit_many(self, requests: list[CommitRequest]) -> list[CommitAnswer]:
        """`commit` for several users' rows in one call (a dispatcher's chunk), each user
        answered on its own: item -> id, or the `ModelMismatch` `commit` would raise. Redis
        sees a few pipelined round trips for them all (`commit_versions_many`). Idempotent
        as `commit` is: a resent call names every item done with these vectors."""
        batch = [
            (user, Vectors(model_id, dim, rows), Vectors(*alt) if alt is not None else None)
            for user, model_id, dim, rows, alt in requests
        ]
        answers = commit_versions_many(self.stores.vectors, self.stores.spaces, batch)
        out: list[CommitAnswer] = []
        for (user, *_), answer in zip(requests, answers, strict=True):
            if isinstance(answer, ModelMismatch):
                out.append(answer)
                continue
            used, committed = answer
            if committed:
                vectors = {
                    row[0]: decode_vectors([row[1]], used.dim)[0]
                    for row in used.rows
                    if row[0] in committed
                }
                read = {row[0] for row in used.rows if len(row) > 3 and row[3]}
                words = read & committed.keys()
                self.registry.add(user, committed, vectors, used.model, words=words)
            out.append(committed)
        return out

    def search(
        self,
        user: str,
        query: bytes,
        k: int,
        model: str | None = None,
        text: str | None = None,
    ) -> list[SearchHit]:
        return self.registry.search(user, np.frombuffer(query, dtype="<f4"), k, model, text)

    def search_pdf(
        self,
        user: str,
        query_vec: bytes,
        query: str,
        k: int,
        mode: str = "fused",
        model: str | None = None,
    ) -> list[SearchHit]:
        vec = np.frombuffer(query_vec, dtype="<f4")
        return self.registry.search_pdf(user, vec, query, k, mode, model)

    def drop(self, user: str) -> None:
        """Forget the cached index and its snapshot (after a reset in Redis)."""
        self.registry.drop(user)

    def evict(self, user: str) -> bool:
        """Free the user's space now (snapshotted first if it changed); operators, tests."""
        return self.registry.evict(user)

    def snapshot(self, user: str) -> bool:
        """Write the user's snapshot now (operators, tests, benchmarks)."""
        return self.registry.snapshot(user)

    def stats(self, top: int = 20) -> dict[str, Any]:
        """What the shard holds, for the operator view (`GET /monitor/shards`)."""
        return {
            "shard": self.shard,
            "shards": self.shards,
            "node": socket.gethostname(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            **self.registry.stats(top),
        }

    def size(self, user: str) -> int:
        space = self.registry.load(user)
        return 0 if space is None else len(space.images)

    def ids(self, user: str) -> list[int]:
        space = self.registry.load(user)
        return [] if space is None else [int(i) for i in space.images.ids()]


def shard_options(settings: Settings) -> dict[str, Any]:
    """Where IndexShards run: spread over the nodes their resources allow (by default)."""
    ix = settings.index
    resources = ix.shard_resources if ix.shard_resources is not None else settings.actor_resources
    return {"scheduling_strategy": ix.shard_placement, "resources": resources}


def get_index_shard(settings: Settings, shard: int) -> ray.actor.ActorHandle:
    name = index_shard_name(settings.app_name, shard)
    return named_actor(IndexShard, name, settings, shard, options=shard_options(settings))
