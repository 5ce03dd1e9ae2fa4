"""Reembedder: the named driver actor of the re-embedding job (Ray Data, lumen.reembed)."""

from __future__ import annotations

import logging
import threading
from typing import Any

import ray

from actors.index_shard import get_index_shard
from actors.naming import named_actor, reembedder_name, shard_for
from lumen.config import ModelSettings, Settings
from lumen.embedding import model_id_for
from lumen.reembed import Reembedding
from lumen.storage import Stores

log = logging.getLogger(__name__)

FAILED_ROUNDS = 3  # rounds in a row that switched nobody: stop until started again
RETRY_PAUSE_S = 10.0


@ray.remote(num_cpus=0, max_restarts=-1)
class Reembedder:
    """Re-embeds every space on another model than the target, one user at a time, on a
    thread of its own (calls such as `status` answer meanwhile).

    Holds no CPU itself; each user's Ray Data pipeline (its actor pool) is released when
    that user's pipeline ends. Detached: a job that finishes leaves it idle (holding
    nothing); `ray stop` or `ray.kill` ends it. A restarted one (killed mid-job) resumes the
    job Redis records (`reindex-job`), from what the NEXT spaces already hold.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stores = Stores(settings)
        self.only: list[str] | None = None
        self.current: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self.stores.spaces.job() is not None:
            self._ensure_thread()

    def start(self, target: dict[str, Any], users: list[str] | None = None) -> dict[str, Any]:
        """Re-embed into `target` (model settings): `users`, or everyone on another model."""
        self.stores.spaces.set_job(target)
        job = Reembedding(self.settings, self.stores, ModelSettings(**target))
        wanted = users if users is not None else job.users()
        job.mark_pending(wanted)
        self.only = users
        self._ensure_thread()
        return self.status()

    def status(self) -> dict[str, Any]:
        job = self.stores.spaces.job()
        return {
            "running": self._thread is not None and self._thread.is_alive(),
            "model": model_id_for(ModelSettings(**job)) if job else None,
            "current": self.current,
        }

    def stop(self) -> None:
        """Stop after the current batch (what is written stays; `start` resumes)."""
        self._stop.set()

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="reembed", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        idle_rounds = 0
        while not self._stop.is_set():
            target = self.stores.spaces.job()
            if target is None:
                return
            model = ModelSettings(**target)
            job = Reembedding(self.settings, self.stores, model, self._stop.is_set)
            users = self.only if self.only is not None else job.users()
            switched = 0
            for user in users:
                if self._stop.is_set():
                    return
                self.current = user
                try:
                    if job.run_user(user):
                        switched += 1
                        self._drop_mirror(user)
                except Exception:  # noqa: BLE001 - recorded per user (state failed)
                    log.exception("re-embedding %s failed", user)
                finally:
                    self.current = None
            left = job.users()
            if self.only is not None or not left:
                if not left:
                    self.stores.spaces.set_job(None)  # every space holds the target
                return
            # users left: ones that failed, or that reached another model meanwhile
            idle_rounds = 0 if switched else idle_rounds + 1
            if idle_rounds >= FAILED_ROUNDS:
                log.error("re-embedding gave up for now on %s; `lumen reindex` retries", left)
                return
            self._stop.wait(RETRY_PAUSE_S)

    def _drop_mirror(self, user: str) -> None:
        """The shard reloads the switched space from Redis (and forgets the old snapshot)."""
        shard = get_index_shard(self.settings, shard_for(user, self.settings.queue.index_shards))
        try:
            ray.get(shard.drop.remote(user), timeout=60)
        except Exception:  # noqa: BLE001 - its convergence notices the new model anyway
            log.warning("shard did not drop %s's old space", user, exc_info=True)


def get_reembedder(settings: Settings) -> ray.actor.ActorHandle:
    return named_actor(Reembedder, reembedder_name(settings.app_name), settings)
