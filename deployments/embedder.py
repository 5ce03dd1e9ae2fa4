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
from lumen.batching import ChunkBatcher
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
from lumen.worker import EmbedderCore, EmbedResult, attempt

BATCH_SIZE = 32  # until the YAML's user_config says otherwise (reconfigure)
BATCH_WAIT_S = 0.02


@serve.deployment
class Embedder:
    """One model per replica. Images are batched by whole chunks (`ChunkBatcher`: one
    submission per chunk, not one call per item) and texts with `@serve.batch`.

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
        self.batcher: ChunkBatcher[torch.Tensor, tuple[str, str], tuple[np.ndarray, str]]
        self.batcher = ChunkBatcher(self._forward, BATCH_SIZE, BATCH_WAIT_S)
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
            self.batcher.set_max_batch_size(self.max_batch_size)
            self._text_batch.set_max_batch_size(self.max_batch_size)
        if "batch_wait_timeout_s" in config:  # images only: a text query never waits to batch
            self.batcher.set_batch_wait_timeout_s(float(config["batch_wait_timeout_s"]))

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

        The chunk is decoded, then joins the passes the batcher is forming as one unit, so
        chunks from several users share forward passes while the next chunk decodes. With a
        GPU the chunk's JPEGs decode there together first (the core decides per item).
        """
        self._ensure_heartbeat()
        if self.core.batch_decoder is not None:
            # decoded on the GPU: the OCR thread runs the pre-check on its own small decode
            decoded = await asyncio.to_thread(self.core.decode_many, user, items)
            looks = [self.core.reader is not None] * len(items)
            return await self._embed_decoded(user, items, decoded, looks, check=True)
        if self.core.null:  # no file to read: the whole chunk in one thread hop
            pairs = await asyncio.to_thread(self.core.decode_and_look_many, user, items)
        else:  # Pillow decodes in parallel, one thread per item (sized to the replica's CPUs)
            pairs = await asyncio.gather(
                *(asyncio.to_thread(attempt, self.core.decode_and_look, user, i) for i in items)
            )
        decoded = [p if isinstance(p, Exception) else p[0] for p in pairs]
        looks = [not isinstance(p, Exception) and p[1] for p in pairs]
        return await self._embed_decoded(user, items, decoded, looks, check=False)

    async def _embed_decoded(
        self,
        user: str,
        items: list[str],
        decoded: list[torch.Tensor | Exception],
        looks: list[bool],
        check: bool,
    ) -> list[EmbedResult]:
        """Embed a decoded chunk in one submission to the batcher; OCR reads the photos in
        `looks` meanwhile. Every item is answered on its own: a failure never fails others."""
        readings: dict[int, asyncio.Future[Words]] = {
            i: self._read_words(user, items[i], check)
            for i, (d, look) in enumerate(zip(decoded, looks, strict=True))
            if look and not isinstance(d, Exception)
        }
        ok = [i for i, d in enumerate(decoded) if not isinstance(d, Exception)]
        answers = await self.batcher.submit([(decoded[i], (user, items[i])) for i in ok])
        embedded = dict(zip(ok, answers, strict=True))
        results = []
        for i, item in enumerate(items):
            answer = embedded.get(i, decoded[i])
            reading = readings.get(i)
            if isinstance(answer, Exception):
                if reading is not None:
                    reading.cancel()
                results.append(self.core.failure(user, item, answer))
                continue
            words = await _words(reading)
            self._count_ocr(words, looked=self.core.reader is not None)
            vector, caption = answer
            results.append(self.core.result(user, item, vector, caption, words))
        return results

    def _count_ocr(self, words: Words | None, looked: bool) -> None:
        if looked:
            with contextlib.suppress(Exception):
                metrics.ocr_photos().inc(1, tags={"outcome": ocr_outcome(words)})

    def _read_words(self, user: str, item: str, check: bool) -> asyncio.Future[Words]:
        """OCR of one photo on the OCR pool; a full pool is a note, never an error."""
        try:
            return self.ocr_pool.submit(self.core.read_words, user, item, time.monotonic(), check)
        except Busy:
            done: asyncio.Future[Words] = asyncio.get_running_loop().create_future()
            done.set_result(Words(note=OCR_BUSY_NOTE))
            return done

    async def _forward(
        self, tensors: list[torch.Tensor], owners: list[tuple[str, str]]
    ) -> list[tuple[np.ndarray, str]]:
        """One forward pass of the batcher: its items assigned to this replica, embedded and
        captioned, in one thread hop."""
        embed = self._assign_and_embed
        vectors, captions, seconds = await asyncio.to_thread(embed, tensors, owners)
        metrics.embed_batch_seconds().observe(seconds)
        metrics.embed_batch_size().observe(len(tensors))
        return list(zip(vectors, captions, strict=True))

    def _assign_and_embed(
        self, tensors: list[torch.Tensor], owners: list[tuple[str, str]]
    ) -> tuple[np.ndarray, list[str], float]:
        by_user: dict[str, list[str]] = {}
        for user, item in owners:
            by_user.setdefault(user, []).append(item)
        self.stores.queue.assign_many(by_user, self.worker_id)  # one round trip for them all
        started = time.perf_counter()
        vectors, captions = self.core.embed_checked(tensors)
        return vectors, captions, time.perf_counter() - started

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
