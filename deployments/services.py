"""What the routes need: stores, auth, uploads, and handles to the Embedder and actors."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np

from actors.dispatcher import get_dispatcher
from actors.index_shard import get_index_shard
from actors.monitor import get_monitor
from actors.naming import shard_for
from lumen.answerer import Answerer, make_answerer
from lumen.auth import Authenticator
from lumen.config import Settings
from lumen.storage import Stores
from lumen.uploads import UploadService

log = logging.getLogger(__name__)


_current: Services | None = None


def install(services: Services) -> None:
    """Make `services` the one this process's routes use."""
    global _current
    _current = services


def current() -> Services:
    if _current is None:
        raise RuntimeError("the ingress has not finished starting")
    return _current


class Services:
    """Built once per ingress replica; every route reaches the system through it."""

    def __init__(self, settings: Settings, embedder: Any) -> None:
        self.settings = settings
        self.stores = Stores(settings)
        self.auth = Authenticator(settings.auth, self.stores.users)
        self.uploads = UploadService(settings, self.stores)
        self.embedder = embedder
        self.answerer: Answerer = make_answerer(settings.gemini)
        self._keeper: asyncio.Task[None] | None = None

    def shard(self, user: str) -> Any:
        return get_index_shard(self.settings, shard_for(user, self.settings.queue.index_shards))

    def dispatcher(self) -> Any:
        return get_dispatcher(self.settings)

    def monitor(self) -> Any:
        return get_monitor(self.settings)

    def start_keeper(self) -> None:
        """Keep the dispatcher and monitor loops running, even after they were restarted."""
        if self._keeper is None or self._keeper.done():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # constructed off the loop: the first request starts it
                return
            self._keeper = loop.create_task(self._keep())

    async def _keep(self) -> None:
        while True:
            try:
                await self.dispatcher().ensure_running.remote()
                await self.monitor().ensure_running.remote()
            except Exception:  # noqa: BLE001 - an actor restarting: try again shortly
                log.warning("background actors not reachable yet", exc_info=True)
            await asyncio.sleep(2.0)

    async def kick(self) -> None:
        """Make sure work starts now (after an upload) rather than at the next keeper tick."""
        try:
            await self.dispatcher().ensure_running.remote()
        except Exception:  # noqa: BLE001
            log.warning("dispatcher not reachable", exc_info=True)

    async def embed_text(self, text: str) -> np.ndarray:
        blob = await self.embedder.embed_text.remote(text)
        return np.frombuffer(blob, dtype="<f4")

    async def embed_image(self, data: bytes) -> np.ndarray:
        blob = await self.embedder.embed_image_bytes.remote(data)
        return np.frombuffer(blob, dtype="<f4")
