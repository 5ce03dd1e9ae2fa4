"""Embedder: the Serve deployment that runs open_clip with dynamic batching."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from typing import Any

import numpy as np
import torch
from ray import serve

from lumen import metrics
from lumen.config import ModelSettings, Settings
from lumen.embedding import ClipModel, model_id_for
from lumen.errors import Busy, ModelMismatch
from lumen.executors import BoundedExecutor
from lumen.ingest.images import open_image
from lumen.naming import worker_id
from lumen.ocr import OCR_BUSY_NOTE, OCR_FAILED_NOTE, Words, ocr_outcome
from lumen.storage import Stores
from lumen.storage.vectors import IndexInfo
from lumen.vectors import encode_vector
from lumen.worker import EmbedderCore, EmbedResult

BATCH_SIZE = 32  # until the YAML's user_config says otherwise (reconfigure)


@serve.deployment
class Embedder:
    """One model per replica; images and texts are batched with `@serve.batch`.

    Decoding runs on threads outside the batch, so the model works on one batch while the next
    batch's images are decoded. Photos that may show words are read by Tesseract on a pool of
    their own (`ocr.workers` threads, never the model's), while their batch runs. Topology
    and scaling come from the Serve YAML.
    """

    def __init__(self, settings: Settings) -> None:
        ctx = serve.get_replica_context()
        self.worker_id = worker_id(ctx.replica_tag)
        threads = torch.get_num_threads()
        self.core = EmbedderCore(settings, self.worker_id, threads=threads)
        self.stores = Stores(settings)
        self.interval_s = settings.monitor.heartbeat_interval_s
        self._beat_task: asyncio.Task[None] | None = None
        self.max_batch_size = BATCH_SIZE
        ocr = settings.ocr
        self.ocr_pool = BoundedExecutor("photo OCR", ocr.workers, ocr.queue)
        self.previous = settings.reindex.previous_model
        if not self.core.null:  # a replica of a later model can load this one for its users
            with contextlib.suppress(Exception):
                model = settings.model.model_dump(mode="json")
                self.stores.spaces.record_model(self.core.model_id, model)
        self._beat()

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Runtime knobs from the YAML's `user_config`."""
        if "max_batch_size" in config:
            self.max_batch_size = int(config["max_batch_size"])
            self._embed_batch.set_max_batch_size(int(config["max_batch_size"]))
            self._text_batch.set_max_batch_size(int(config["max_batch_size"]))
        if "batch_wait_timeout_s" in config:  # images only: a text query never waits to batch
            self._embed_batch.set_batch_wait_timeout_s(float(config["batch_wait_timeout_s"]))

    def _beat(self) -> None:
        with contextlib.suppress(Exception):
            beat = {**self.core.metrics(), "batch": self.max_batch_size}  # paces the dispatcher
            self.stores.heartbeats.beat(self.worker_id, beat)

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.to_thread(self._beat)
            await asyncio.sleep(self.interval_s)

    def _ensure_heartbeat(self) -> None:
        if self._beat_task is None or self._beat_task.done():
            self._beat_task = asyncio.get_running_loop().create_task(self._heartbeat_loop())

    async def check_health(self) -> None:
        """Serve calls this periodically; raising makes Serve replace this replica."""
        task = self._beat_task
        if task is not None and task.done() and not task.cancelled() and task.exception():
            raise RuntimeError(f"the heartbeat loop died: {task.exception()!r}")
        problem = self.core.health_problem()
        if problem is not None:  # tell the monitor why before Serve replaces this replica
            with contextlib.suppress(Exception):
                beat = {**self.core.metrics(), "healthy": False, "problem": problem}
                await asyncio.to_thread(self.stores.heartbeats.beat, self.worker_id, beat)
            raise RuntimeError(problem)
        self._ensure_heartbeat()

    async def embed_chunk(self, parts: list[tuple[str, list[str]]]) -> list[EmbedResult]:
        """Embed a chunk of several users' items (the dispatcher packs light users together,
        so their items fill one batch as one heavy user's would)."""
        groups = list(
            await asyncio.gather(*(self._embed_items(user, items) for user, items in parts))
        )
        if not self.core.null:  # every user's space model in one round trip, after embedding
            infos = await asyncio.to_thread(self.stores.vectors.infos, [u for u, _ in parts])
            groups = list(
                await asyncio.gather(
                    *(
                        self._with_previous(user, group, info)
                        for (user, _), group, info in zip(parts, groups, infos, strict=True)
                    )
                )
            )
        return [result for group in groups for result in group]

    def _lookup(self, model_id: str) -> ModelSettings | None:
        """How to load a previous model: as recorded by its Embedder, or from settings."""
        recorded = self.stores.spaces.model_settings(model_id)
        if recorded is not None:
            return ModelSettings(**recorded)
        if self.previous is not None and model_id_for(self.previous) == model_id:
            return self.previous
        return None

    def _model(self, model_id: str | None) -> ClipModel | None:
        """The model for `model_id`: None for the deployed one; ModelMismatch if unknown."""
        if not model_id or model_id == self.core.model_id or self.core.null:
            return None
        model = self.core.other_model(model_id, self._lookup)
        if model is None:
            raise ModelMismatch(
                f"this space was indexed with model {model_id}, which the service can no "
                "longer load; reset the space (POST /reset) and upload again"
            )
        return model

    async def embed_items(self, user: str, items: list[str]) -> list[EmbedResult]:
        """`_embed_items`, plus the active space's model's vectors while the user's space
        still holds a previous model (see `EmbedResult.alt_vector`)."""
        return await self.embed_chunk([(user, items)])

    async def _with_previous(
        self, user: str, results: list[EmbedResult], info: IndexInfo | None
    ) -> list[EmbedResult]:
        """`results`, with the vectors of the model the user's space holds (`info`) when it
        is not the deployed one."""
        if info is None or info.model == self.core.model_id:
            return results
        try:
            model = await asyncio.to_thread(self.core.other_model, info.model, self._lookup)
        except Exception:  # noqa: BLE001 - the commit then says the space holds another model
            return results
        ok = [r for r in results if r.error is None]
        if model is None or not ok:
            return results
        vectors = await asyncio.to_thread(self.core.embed_with, model, user, [r.item for r in ok])
        alt = {r.item: encode_vector(v) for r, v in zip(ok, vectors, strict=True) if v is not None}
        return [
            dataclasses.replace(
                r, alt_vector=alt[r.item], alt_model_id=model.model_id, alt_dim=model.dim
            )
            if r.item in alt
            else r
            for r in results
        ]

    async def _embed_items(self, user: str, items: list[str]) -> list[EmbedResult]:
        """Embed a chunk of one user's queued items: one request, many batch slots.

        Each item is decoded on a thread and then joins whatever `@serve.batch` is forming,
        so chunks from several users share forward passes while the next chunk decodes.
        With a GPU the chunk's JPEGs decode there together first (the core decides per item).
        """
        self._ensure_heartbeat()
        if self.core.batch_decoder is not None:
            decoded = await asyncio.to_thread(self.core.decode_many, user, items)
            pairs = zip(items, decoded, strict=True)
            return list(await asyncio.gather(*(self._embed_decoded(user, *p) for p in pairs)))
        return list(await asyncio.gather(*(self._embed_one(user, item) for item in items)))

    async def _embed_one(self, user: str, item: str) -> EmbedResult:
        reading: asyncio.Future[Words] | None = None
        try:
            tensor, look = await asyncio.to_thread(self.core.decode_and_look, user, item)
            reading = self._read_words(user, item, check=False) if look else None
            vector, caption = await self._embed_batch(tensor, (user, item))
        except Exception as exc:  # noqa: BLE001 - reported per item, never fails the batch
            if reading is not None:
                reading.cancel()
            return self.core.failure(user, item, exc)
        words = await _words(reading)
        self._count_ocr(words, looked=self.core.reader is not None)
        return self.core.result(user, item, vector, caption, words)

    def _count_ocr(self, words: Words | None, looked: bool) -> None:
        if looked:
            with contextlib.suppress(Exception):
                metrics.ocr_photos().inc(1, tags={"outcome": ocr_outcome(words)})

    async def _embed_decoded(
        self, user: str, item: str, decoded: torch.Tensor | Exception
    ) -> EmbedResult:
        if isinstance(decoded, Exception):
            return self.core.failure(user, item, decoded)
        # decoded on the GPU: the OCR thread runs the pre-check on its own small decode
        reading = self._read_words(user, item, check=True) if self.core.reader else None
        try:
            vector, caption = await self._embed_batch(decoded, (user, item))
        except Exception as exc:  # noqa: BLE001 - reported per item, never fails the batch
            if reading is not None:
                reading.cancel()
            return self.core.failure(user, item, exc)
        words = await _words(reading)
        self._count_ocr(words, looked=reading is not None)
        return self.core.result(user, item, vector, caption, words)

    def _read_words(self, user: str, item: str, check: bool) -> asyncio.Future[Words]:
        """OCR of one photo on the OCR pool; a full pool is a note, never an error."""
        try:
            return self.ocr_pool.submit(self.core.read_words, user, item, time.monotonic(), check)
        except Busy:
            done: asyncio.Future[Words] = asyncio.get_running_loop().create_future()
            done.set_result(Words(note=OCR_BUSY_NOTE))
            return done

    @serve.batch(max_batch_size=BATCH_SIZE, batch_wait_timeout_s=0.02)
    async def _embed_batch(
        self, tensors: list[torch.Tensor], owners: list[tuple[str, str]]
    ) -> list[tuple[np.ndarray, str]]:
        by_user: dict[str, list[str]] = {}
        for user, item in owners:
            by_user.setdefault(user, []).append(item)
        await asyncio.to_thread(self._assign, by_user)
        started = time.perf_counter()
        vectors, captions = await asyncio.to_thread(self.core.embed_checked, tensors)
        metrics.embed_batch_seconds().observe(time.perf_counter() - started)
        metrics.embed_batch_size().observe(len(tensors))
        return list(zip(vectors, captions, strict=True))

    def _assign(self, by_user: dict[str, list[str]]) -> None:
        self.stores.queue.assign_many(by_user, self.worker_id)  # one round trip for them all

    async def embed_text(self, text: str, model_id: str | None = None) -> bytes:
        """The text's vector by the deployed model, or by `model_id` (a user's space still
        on a previous model during an upgrade: its queries are encoded with that model)."""
        model = await asyncio.to_thread(self._model, model_id)
        if model is not None:
            return encode_vector((await asyncio.to_thread(model.encode_texts, [text]))[0])
        return encode_vector(await self._text_batch(text))

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)
    async def _text_batch(self, texts: list[str]) -> list[np.ndarray]:
        return list(await asyncio.to_thread(self.core.embed_texts, texts))

    async def embed_image_bytes(self, data: bytes, model_id: str | None = None) -> bytes:
        model = await asyncio.to_thread(self._model, model_id)
        if model is not None:
            img = await asyncio.to_thread(
                open_image, data, max_pixels=self.core.settings.limits.max_image_pixels
            )
            vectors = await asyncio.to_thread(model.encode_images, [img])
            return encode_vector(vectors[0])
        tensor = await asyncio.to_thread(self.core.decode_bytes, data)
        vectors, _ = await asyncio.to_thread(self.core.embed_tensors, [tensor])
        return encode_vector(vectors[0])


async def _words(reading: asyncio.Future[Words] | None) -> Words | None:
    """The OCR result of a photo (None: not read); OCR never fails the item."""
    if reading is None:
        return None
    try:
        return await reading
    except Exception:  # noqa: BLE001 - the reader never raises; this is the last guard
        return Words(note=OCR_FAILED_NOTE)
