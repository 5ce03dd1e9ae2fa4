"""IndexShard: named actors, each holding the FAISS indexes of the users hashed to it."""

from __future__ import annotations

import numpy as np
import ray

from actors.naming import index_shard_name, named_actor
from lumen.config import Settings
from lumen.events import EventKind
from lumen.metrics import RayMetrics
from lumen.search import SearchHit
from lumen.spaces import SpaceRegistry
from lumen.storage import Stores
from lumen.vectors import decode_vectors


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class IndexShard:
    """Commits vectors to Redis (the truth) and mirrors them in FAISS; serves searches.

    Detached: ended only when Ray shuts down or an operator kills it; a restarted shard
    rebuilds each user's index from Redis on first use. Calls are serialised (one at a
    time), so a commit and a reset of the same user never interleave.
    """

    def __init__(self, settings: Settings) -> None:
        self.stores = Stores(settings)
        self.registry = SpaceRegistry(settings, self.stores, on_repair=self._repaired)
        self.metrics = RayMetrics()

    def _repaired(self, user: str, mirrored: int, stored: int) -> None:
        self.metrics.index_repairs(1)
        self.stores.events.record(
            EventKind.INDEX_REPAIRED, user=user, mirrored=mirrored, stored=stored
        )

    def ping(self) -> bool:
        """Readiness: the shard answers (after whatever call it is serving now)."""
        return True

    def converge(self) -> int:
        """Check every loaded user's mirror against Redis (the supervisor calls this)."""
        return len(self.registry.converge_all())

    def commit(
        self, user: str, model_id: str, dim: int, rows: list[tuple[str, bytes, str]]
    ) -> dict[str, int]:
        committed = self.stores.vectors.commit(user, model_id, dim, rows)
        if committed:
            vectors = {
                item: decode_vectors([blob], dim)[0] for item, blob, _ in rows if item in committed
            }
            self.registry.add(user, committed, vectors)
        return committed

    def search(self, user: str, query: bytes, k: int) -> list[SearchHit]:
        return self.registry.search(user, np.frombuffer(query, dtype="<f4"), k)

    def search_pdf(
        self, user: str, query_vec: bytes, query: str, k: int, mode: str = "fused"
    ) -> list[SearchHit]:
        vec = np.frombuffer(query_vec, dtype="<f4")
        return self.registry.search_pdf(user, vec, query, k, mode)

    def drop(self, user: str) -> None:
        """Forget the cached index (after a reset in Redis)."""
        self.registry.drop(user)

    def size(self, user: str) -> int:
        space = self.registry.load(user)
        return 0 if space is None else len(space.images)

    def ids(self, user: str) -> list[int]:
        space = self.registry.load(user)
        return [] if space is None else [int(i) for i in space.images.ids()]


def get_index_shard(settings: Settings, shard: int) -> ray.actor.ActorHandle:
    return named_actor(IndexShard, index_shard_name(settings.app_name, shard), settings)
