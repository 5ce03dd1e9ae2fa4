"""Search use cases: images by text and/or image, PDF pages by question (with an answer).

Framework-free: the ingress hands in an `Encoder` (the Embedder deployment), an `Index`
(the user's IndexShard) and the stores; unit tests hand in fakes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from lumen.answerer import MAX_ANSWER_PAGES, Answerer, PageInput
from lumen.errors import BadRequest, LimitExceeded, SpaceSwitched
from lumen.metrics import Metrics
from lumen.paths import resolve_item
from lumen.vectors import normalize

T = TypeVar("T")
Blocking = Callable[..., Awaitable[Any]]


class SearchMode(StrEnum):
    """Which side ranks PDF pages: both fused (default), page text alone, or CLIP alone."""

    FUSED = "fused"
    TEXT = "text"
    IMAGE = "image"


@dataclass(frozen=True)
class SearchHit:
    """One item a search found; PDF searches add the text side and the fused score."""

    item: str
    similarity: float
    caption: str = ""
    text_score: float | None = None
    fused: float | None = None
    # /search: why it matched ("image", "text") and the photo's words that matched
    matched: tuple[str, ...] = ()
    words: tuple[str, ...] = ()


class Encoder(Protocol):
    """Queries to vectors; `model` None is the deployed model (else a previous one)."""

    async def embed_text(self, text: str, model: str | None = None) -> np.ndarray: ...
    async def embed_image(self, data: bytes, model: str | None = None) -> np.ndarray: ...


class Index(Protocol):
    """The shard holding a user's space; `model` is the model of the query vector."""

    async def search(
        self, user: str, query: bytes, k: int, model: str | None = None, text: str | None = None
    ) -> list[SearchHit]: ...
    async def search_pdf(
        self, user: str, query: bytes, text: str, k: int, mode: str, model: str | None = None
    ) -> list[SearchHit]: ...


def _no_model(user: str) -> str | None:
    return None


class PageStore(Protocol):
    def meta(self, user: str, items: list[str]) -> list[dict[str, Any] | None]: ...
    def pdf_text(self, user: str, item: str) -> str | None: ...


@dataclass(frozen=True)
class ImageResult:
    item: str
    caption: str
    similarity: float
    matched: tuple[str, ...] = ("image",)
    words: tuple[str, ...] = ()


@dataclass(frozen=True)
class PageResult:
    item: str
    similarity: float
    doc: str | None
    page: int | None
    text_score: float | None
    score: float | None
    text_source: str | None = None
    # why OCR left the page without text ("ocr_timeout", "ocr_failed", "ocr_unavailable")
    ocr_note: str | None = None


@dataclass
class PdfAnswer:
    """`pages` are the first `top_k` in rank order; `top` is the page the answer came from:
    the one Gemini named among the best MAX_ANSWER_PAGES, else rank 1."""

    query: str
    pages: list[PageResult] = field(default_factory=list)
    answer: str | None = None
    reason: str | None = None
    top: PageResult | None = None


def parse_top_k(raw: str | None, default: int, maximum: int) -> int:
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"top_k must be an integer between 1 and {maximum}") from None
    if not 1 <= value <= maximum:
        raise BadRequest(f"top_k must be between 1 and {maximum}")
    return value


def clean_query(raw: str | None, max_chars: int) -> str | None:
    if raw is None or not raw.strip():
        return None
    if len(raw) > max_chars:
        raise LimitExceeded(f"query is longer than {max_chars} characters", "max_query_chars")
    return raw.strip()


def parse_mode(raw: str) -> SearchMode:
    try:
        return SearchMode(raw)
    except ValueError:
        raise BadRequest("mode must be one of: fused, text, image") from None


@dataclass
class Spans:
    """Wall time of each step of one request, for a `Server-Timing` header."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def span(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

    def header(self) -> str:
        """`embed;dur=104.20, index;dur=3.10` (milliseconds, as Server-Timing wants)."""
        return ", ".join(f"{name};dur={1e3 * s:.2f}" for name, s in self.seconds.items())


async def _thread(fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.to_thread(fn, *args)


@dataclass
class SearchService:
    """Searches a user's own space; PDF questions also get the best page's answer.

    Blocking work runs through `run_io` (Redis, files) and `run_answer` (the answerer):
    bounded pools in the ingress, plain threads by default.
    """

    data_dir: Path
    encoder: Encoder
    index_for: Callable[[str], Index]
    pages: PageStore
    answerer: Answerer
    metrics: Metrics
    run_answer: Blocking = _thread
    run_io: Blocking = _thread
    # The model of the user's active space (queries are encoded with it: during an upgrade
    # a space on the previous model keeps answering); None: the deployed model.
    model_of: Callable[[str], str | None] = _no_model

    async def _searched(self, user: str, search: Callable[[str | None], Awaitable[T]]) -> T:
        """`search(model)` with the user's active model; once more if the space switched
        model in between (an upgrade's switch), so a search never sees the switch."""
        try:
            return await search(await self.run_io(self.model_of, user))
        except SpaceSwitched:
            return await search(await self.run_io(self.model_of, user))

    async def images(
        self,
        user: str,
        text: str | None,
        image: bytes | None,
        k: int,
        spans: Spans | None = None,
    ) -> list[ImageResult]:
        """Items most similar to the text, the image, or both (their vectors averaged); a
        text also ranks photos by the words OCR read in them, fused into one ranking."""
        if text is None and image is None:
            raise BadRequest("give a text `query`, an `image`, or both")
        spans = spans if spans is not None else Spans()
        started = time.perf_counter()

        async def search(model: str | None) -> list[SearchHit]:
            encodes = []
            if text is not None:
                encodes.append(self.encoder.embed_text(text, model))
            if image is not None:
                encodes.append(self.encoder.embed_image(image, model))
            with spans.span("embed"):  # text and image encode at once when both are given
                vectors = await asyncio.gather(*encodes)
            query = normalize(np.mean(np.stack(vectors), axis=0, keepdims=True))[0]
            with spans.span("index"):
                return await self.index_for(user).search(
                    user, query.astype("<f4").tobytes(), k, model, text=text
                )

        hits = await self._searched(user, search)
        self.metrics.search_seconds("/search", time.perf_counter() - started)
        return [
            ImageResult(h.item, h.caption, round(h.similarity, 6), h.matched or ("image",), h.words)
            for h in hits
        ]

    async def pdf(self, user: str, text: str, k: int, mode: SearchMode) -> PdfAnswer:
        """The best pages for a question, and Gemini's answer from the first one."""
        started = time.perf_counter()
        wanted = max(k, MAX_ANSWER_PAGES)  # the answerer chooses among the best 3

        async def search(model: str | None) -> list[SearchHit]:
            query = (await self.encoder.embed_text(text, model)).astype("<f4").tobytes()
            index = self.index_for(user)
            return await index.search_pdf(user, query, text, wanted, str(mode), model)

        hits = await self._searched(user, search)
        if not hits:
            return PdfAnswer(text)
        metas = await self.run_io(self.pages.meta, user, [h.item for h in hits])
        pages = [
            PageResult(
                h.item,
                round(h.similarity, 6),
                (m or {}).get("doc"),
                (m or {}).get("page"),
                h.text_score,
                h.fused,
                (m or {}).get("text_source", "text"),
                (m or {}).get("ocr_note") or None,
            )  # fmt: skip
            for h, m in zip(hits, metas, strict=True)
        ]
        self.metrics.search_seconds("/search/pdf", time.perf_counter() - started)
        best = pages[:MAX_ANSWER_PAGES]
        inputs = [await self.run_io(self._page_input, user, p) for p in best]
        answer = await self.run_answer(self.answerer.answer_pages, text, inputs)
        chosen = answer.page - 1 if answer.page and answer.page <= len(best) else 0
        return PdfAnswer(text, pages[:k], answer.text, answer.reason, best[chosen])

    def _page_input(self, user: str, page: PageResult) -> PageInput:
        image = resolve_item(self.data_dir, user, page.item).read_bytes()
        label = f"{page.doc or 'document'}, page {page.page}" if page.page else (page.doc or "")
        return PageInput(image, "image/jpeg", self.pages.pdf_text(user, page.item), label)
