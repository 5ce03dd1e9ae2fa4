"""The Embedder's framework-free core: decode an item, embed batches, caption, read the words
in photos (OCR, by setting), report health."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import numpy as np
import psutil
import torch
from PIL import Image

from lumen.captions import Captioner
from lumen.config import ModelSettings, Settings
from lumen.embedding import ClipModel
from lumen.errors import LumenError
from lumen.gpu_decode import (
    BatchDecoder,
    Decoded,
    PreprocessSpec,
    UnsupportedPreprocess,
    gpu_decode_device,
)
from lumen.ingest.images import open_image
from lumen.models import derived_dir
from lumen.nullmodel import NullClip
from lumen.ocr import CHECK_DRAFT_SIDE, PhotoReader, Words, may_show_text
from lumen.paths import resolve_item
from lumen.vectors import encode_vector

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class EmbedResult:
    """What the dispatcher gets back for one item: a vector, or an error that says why."""

    user: str
    item: str
    worker: str
    vector: bytes | None = None
    caption: str = ""
    error: str | None = None
    permanent: bool = False  # True: retrying cannot help (corrupt or refused input)
    model_id: str = ""  # the model that made `vector`: an index never mixes models
    dim: int = 0
    words: str = ""  # what OCR read in the photo ("" without text or without OCR)
    ocr_note: str = ""  # why OCR read nothing, when it tried and failed (lumen.ocr notes)
    # While the user's active space holds a previous model (an upgrade in progress), the
    # item is embedded with that model too: committed to the active space, and `vector` to
    # the re-embedding's NEXT space (docs/models.md). `words` are the item's, read once.
    alt_vector: bytes | None = None
    alt_model_id: str = ""
    alt_dim: int = 0


# Consecutive failed forward passes after which a replica reports itself unhealthy.
MAX_FORWARD_FAILURES = 3


class EmbedderCore:
    """Loads the model once; decodes on threads; embeds whole batches."""

    def __init__(
        self,
        settings: Settings,
        worker_id: str,
        threads: int | None = None,
        decode_device: str | None = None,
    ) -> None:
        """`decode_device` forces the batched JPEG decoder onto a device ("cpu" in tests and
        bench dry runs); by default it runs where the model runs, if that is a CUDA GPU."""
        self.settings = settings
        self.worker_id = worker_id
        self.null = settings.model.benchmark_null
        self.model = (
            NullClip() if self.null else ClipModel.from_settings(settings.model, threads=threads)
        )
        derived = None if self.null else derived_dir(settings.model)
        self.captioner = Captioner(self.model, cache_dir=derived)
        # JPEG draft mode decodes at the smallest 1/2^k scale still >= the model's input.
        side = int(self.model.image_size)
        self._draft = self._look_draft = (side, side)
        self.reader: PhotoReader | None = None
        if settings.ocr.photos and not self.null:
            self.reader = PhotoReader(settings.ocr, settings.limits.max_image_pixels)
            # the pre-check looks at the model's own decode: enough pixels for it, please
            look = max(side, CHECK_DRAFT_SIDE)
            self._look_draft = (look, look)
        self._proc = psutil.Process(os.getpid())
        self._proc.cpu_percent(None)
        self.forward_failures = 0
        self.last_forward_error: str | None = None
        self.passes = 0  # forward passes run, and items in them (images per pass)
        self.pass_items = 0
        self.batch_decoder = self._batch_decoder(decode_device, threads)
        # Previous models by id (None: cannot be loaded), loaded on first need.
        self.others: dict[str, ClipModel | None] = {}

    def _batch_decoder(self, device: str | None, threads: int | None) -> BatchDecoder | None:
        """The batched JPEG decoder, or None: every item decodes with Pillow, as on CPUs."""
        if not isinstance(self.model, ClipModel):
            return None
        model = self.settings.model
        device = device or gpu_decode_device(self.model.device, model.decode_on_gpu)
        if device is None:
            return None
        try:  # the eval transform open_clip built with the model
            spec = PreprocessSpec.from_transform(self.model._preprocess)
        except UnsupportedPreprocess as exc:
            log.warning("JPEGs decode with Pillow on the CPU: %s", exc)
            return None
        fp16 = device.startswith("cuda") and model.fp16_on_gpu  # as the model's own precision
        return BatchDecoder(
            spec,
            device=device,
            dtype=torch.float16 if fp16 else torch.float32,
            max_pixels=self.settings.limits.max_image_pixels,
            fallback=self.decode_bytes,
            threads=threads,
        )

    @property
    def model_id(self) -> str:
        return self.model.model_id

    @property
    def dim(self) -> int:
        return int(self.model.dim)

    def decode(self, user: str, item: str) -> torch.Tensor:
        if isinstance(self.model, NullClip):  # benchmark-only: no file read, no decode
            return self.model.tensor_for(item)
        path = resolve_item(self.settings.data_dir, user, item)
        img = open_image(
            path, max_pixels=self.settings.limits.max_image_pixels, draft_size=self._draft
        )
        return self.model.preprocess_image(img)

    def decode_and_look(self, user: str, item: str) -> tuple[torch.Tensor, bool]:
        """`decode`, and whether the photo may show words (OCR's pre-check, on the same
        decoded image: a photo without text costs a millisecond more, nothing else)."""
        if self.reader is None or isinstance(self.model, NullClip):
            return self.decode(user, item), False
        if self._look_draft != self._draft:
            # A model smaller than the check's draft (the test models): decode twice, so the
            # model's tensor is exactly what the same image gives as a query or re-embedded.
            looked = self._open(user, item, self._look_draft)
            return self.decode(user, item), may_show_text(looked)
        img = self._open(user, item, self._draft)
        return self.model.preprocess_image(img), may_show_text(img)

    def decode_and_look_many(
        self, user: str, items: list[str]
    ) -> list[tuple[torch.Tensor, bool] | Exception]:
        """`decode_and_look` of each item in turn, or the exception that says why not (the
        null model's chunk in one thread hop: it reads no files)."""
        return [attempt(self.decode_and_look, user, item) for item in items]

    def _open(self, user: str, item: str, draft: tuple[int, int]) -> Image.Image:
        path = resolve_item(self.settings.data_dir, user, item)
        return open_image(path, max_pixels=self.settings.limits.max_image_pixels, draft_size=draft)

    def read_words(self, user: str, item: str, asked_at: float, check: bool = False) -> Words:
        """The words OCR reads in the item (asked at `asked_at`, time.monotonic()); never
        raises. `check`: run the pre-check first (the GPU path decodes without Pillow)."""
        if self.reader is None:
            return Words()
        try:
            path = resolve_item(self.settings.data_dir, user, item)
        except Exception:  # noqa: BLE001 - the model's decode reports bad items
            return Words()
        return self.reader.read(path, asked_at, check)

    def decode_bytes(self, data: bytes) -> torch.Tensor:
        limits = self.settings.limits
        img = open_image(data, max_pixels=limits.max_image_pixels, draft_size=self._draft)
        return self.model.preprocess_image(img)

    def decode_many(self, user: str, items: list[str]) -> list[Decoded]:
        """Decode a chunk: one tensor, or the exception that says why not, per item.

        With a batch decoder, baseline JPEGs decode together on its device and the rest with
        Pillow on its threads (sized to the replica's CPUs); without one, item by item.
        """
        if self.batch_decoder is None:
            return [attempt(self.decode, user, item) for item in items]
        paths = [attempt(resolve_item, self.settings.data_dir, user, item) for item in items]
        found = [p for p in paths if not isinstance(p, Exception)]
        decoded = iter(self.batch_decoder.decode(found))
        return [p if isinstance(p, Exception) else next(decoded) for p in paths]

    def _stack(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        if self.batch_decoder is not None:  # GPU-decoded and Pillow tensors share batches
            dtype = self.batch_decoder.dtype
            tensors = [t.to(self.model.device, dtype, non_blocking=True) for t in tensors]
        return torch.stack(tensors)

    def embed_tensors(self, tensors: list[torch.Tensor]) -> tuple[np.ndarray, list[str]]:
        vectors = self.model.encode_image_tensors(self._stack(tensors))
        captions = self.captioner.caption(vectors, self.settings.model.caption_labels)
        return vectors, captions

    def embed_checked(self, tensors: list[torch.Tensor]) -> tuple[np.ndarray, list[str]]:
        """`embed_tensors`, counting consecutive failures of the model itself."""
        self.passes += 1
        self.pass_items += len(tensors)
        try:
            out = self.embed_tensors(tensors)
        except Exception as exc:
            self.forward_failures += 1
            self.last_forward_error = repr(exc)[:300]
            raise
        self.forward_failures = 0
        return out

    def health_problem(self) -> str | None:
        """Why this replica cannot embed, or None: the model failed its last few batches."""
        if self.forward_failures >= MAX_FORWARD_FAILURES:
            return (
                f"the model failed {self.forward_failures} batches in a row "
                f"(last: {self.last_forward_error})"
            )
        return None

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        return self.model.encode_texts(texts)

    def other_model(
        self, model_id: str, lookup: Callable[[str], ModelSettings | None]
    ) -> ClipModel | None:
        """The previous model `model_id` (settings from `lookup`), loaded once; None when it
        is unknown or fails to load (said once in the log)."""
        if model_id not in self.others:
            settings = lookup(model_id)
            model: ClipModel | None = None
            if settings is not None:
                try:
                    model = ClipModel.from_settings(settings)
                except Exception:  # noqa: BLE001 - reported; its users' queries get a 409
                    log.exception("previous model %s could not be loaded", model_id)
            if model is not None and model.model_id != model_id:
                log.error("settings recorded for %s load %s", model_id, model.model_id)
                model = None
            self.others[model_id] = model
        return self.others[model_id]

    def embed_with(self, model: ClipModel, user: str, items: list[str]) -> list[np.ndarray | None]:
        """Vectors of `items` by a previous model (its own preprocessing), None where the
        item cannot be read; unbatched across requests: only uploads during an upgrade."""
        tensors: list[torch.Tensor | None] = []
        for item in items:
            try:
                path = resolve_item(self.settings.data_dir, user, item)
                img = open_image(path, max_pixels=self.settings.limits.max_image_pixels)
                tensors.append(model.preprocess_image(img))
            except Exception:  # noqa: BLE001 - the deployed model's result says why
                tensors.append(None)
        good = [t for t in tensors if t is not None]
        vectors = iter(model.encode_image_tensors(torch.stack(good)) if good else [])
        return [None if t is None else next(vectors) for t in tensors]

    def result(
        self, user: str, item: str, vector: np.ndarray, caption: str, words: Words | None = None
    ) -> EmbedResult:
        words = words or Words()
        return EmbedResult(
            user, item, self.worker_id, encode_vector(vector), caption,
            model_id=self.model_id, dim=self.dim, words=words.text, ocr_note=words.note,
        )  # fmt: skip

    def failure(self, user: str, item: str, exc: BaseException) -> EmbedResult:
        permanent = isinstance(exc, LumenError | FileNotFoundError)
        return EmbedResult(
            user, item, self.worker_id, error=str(exc) or type(exc).__name__, permanent=permanent
        )

    def metrics(self) -> dict[str, Any]:
        metrics: dict[str, Any] = {
            "cpu": round(self._proc.cpu_percent(None), 1),
            "mem": round(self._proc.memory_percent(), 1),
            "rss_mb": round(self._proc.memory_info().rss / 1024**2, 1),
            "ts": int(time.time()),
            "pid": os.getpid(),
            "node": os.uname().nodename,
            "device": str(self.model.device),
            "passes": self.passes,
            "pass_items": self.pass_items,
        }
        if torch.cuda.is_available():
            try:
                metrics["gpu"] = float(torch.cuda.utilization())
                metrics["gpu_mem"] = round(
                    100
                    * torch.cuda.memory_allocated()
                    / torch.cuda.get_device_properties(0).total_memory,
                    1,
                )
            except Exception:  # noqa: BLE001 - pynvml missing on some images
                pass
        return metrics


def attempt(fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R | Exception:
    """`fn(*args)`, or the exception it raised (reported per item, never for the chunk)."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001
        return exc
