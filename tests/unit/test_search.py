"""Search use cases through fakes: the query vector, the caller's own shard, the answer."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from lumen.answerer import Answer, PageInput
from lumen.errors import BadRequest, LimitExceeded, SpaceSwitched
from lumen.search import (
    SearchHit,
    SearchMode,
    SearchService,
    Spans,
    clean_query,
    parse_mode,
    parse_top_k,
)
from tests.support.dispatch_fakes import FakeMetrics


class FakeEncoder:
    def __init__(self) -> None:
        self.models: list[str | None] = []

    async def embed_text(self, text: str, model: str | None = None) -> np.ndarray:
        self.models.append(model)
        return np.array([1.0, 0.0], dtype="<f4")

    async def embed_image(self, data: bytes, model: str | None = None) -> np.ndarray:
        self.models.append(model)
        return np.array([0.0, 1.0], dtype="<f4")


class FakeIndex:
    def __init__(self, hits: list[SearchHit], model: str | None = None) -> None:
        self.hits = hits
        self.model = model  # the space's model: a query of another one is refused
        self.asked: list[tuple[str, np.ndarray, int, str | None]] = []
        self.texts: list[str | None] = []  # the query text /search gave (photos' words)

    async def search(
        self,
        user: str,
        query: bytes,
        k: int,
        model: str | None = None,
        text: str | None = None,
    ) -> list[SearchHit]:
        self.texts.append(text)
        if self.model is not None and model != self.model:
            raise SpaceSwitched(f"this space now holds {self.model}")
        self.asked.append((user, np.frombuffer(query, dtype="<f4"), k, None))
        return self.hits[:k]

    async def search_pdf(
        self, user: str, query: bytes, text: str, k: int, mode: str, model: str | None = None
    ) -> list[SearchHit]:
        self.asked.append((user, np.frombuffer(query, dtype="<f4"), k, mode))
        return self.hits[:k]


class FakePages:
    def meta(self, user: str, items: list[str]) -> list[dict[str, object] | None]:
        return [{"doc": "manual", "page": i + 1} for i, _ in enumerate(items)]

    def pdf_text(self, user: str, item: str) -> str | None:
        return f"text of {item}"


class FakeAnswerer:
    def __init__(self, page: int | None = None) -> None:
        self.asked: list[tuple[str, bytes, str | None]] = []
        self.page = page  # the page number (1-based among those sent) the answer names

    def answer(self, question: str, page_image: bytes, mime: str, page_text: str | None) -> Answer:
        self.asked.append((question, page_image, page_text))
        return Answer("page one says so")

    def answer_pages(self, question: str, pages: Sequence[PageInput]) -> Answer:
        for page in pages:
            self.asked.append((question, page.image, page.text))
        return Answer("page one says so", page=self.page)


def service(tmp_path: Path, index: FakeIndex, answerer: FakeAnswerer) -> SearchService:
    shards = {"alice": index}
    return SearchService(
        tmp_path, FakeEncoder(), shards.__getitem__, FakePages(), answerer, FakeMetrics()
    )


def test_a_text_and_an_image_together_search_with_their_normalised_mean(tmp_path: Path) -> None:
    index = FakeIndex([SearchHit("uploads/alice/a.jpg", 0.91234567, "a dog")])
    found = asyncio.run(service(tmp_path, index, FakeAnswerer()).images("alice", "dog", b"x", 3))
    [(user, query, k, _)] = index.asked
    assert user == "alice" and k == 3
    assert np.allclose(query, [2**-0.5, 2**-0.5])
    assert [(r.item, r.caption, r.similarity) for r in found] == [
        ("uploads/alice/a.jpg", "a dog", 0.912346)
    ]


def test_a_query_is_encoded_with_the_model_of_the_users_active_space(tmp_path: Path) -> None:
    index = FakeIndex([SearchHit("uploads/alice/a.jpg", 0.5)], model="model-a")
    encoder = FakeEncoder()
    svc = SearchService(
        tmp_path, encoder, {"alice": index}.__getitem__, FakePages(), FakeAnswerer(),
        FakeMetrics(), model_of=lambda user: "model-a",
    )  # fmt: skip
    assert [h.item for h in asyncio.run(svc.images("alice", "dog", b"x", 1))] == [
        "uploads/alice/a.jpg"
    ]
    assert encoder.models == ["model-a", "model-a"]


def test_a_search_that_meets_the_switch_is_encoded_again_with_the_new_model(
    tmp_path: Path,
) -> None:
    """The space switched to model B after the query was encoded with A: searched again."""
    index = FakeIndex([SearchHit("uploads/alice/a.jpg", 0.5)], model="model-b")
    models = iter(["model-a", "model-b"])
    encoder = FakeEncoder()
    svc = SearchService(
        tmp_path, encoder, {"alice": index}.__getitem__, FakePages(), FakeAnswerer(),
        FakeMetrics(), model_of=lambda user: next(models),
    )  # fmt: skip
    found = asyncio.run(svc.images("alice", "dog", None, 1))
    assert [h.item for h in found] == ["uploads/alice/a.jpg"]
    assert encoder.models == ["model-a", "model-b"]


def test_the_query_text_reaches_the_index_with_the_model_and_again_after_the_switch(
    tmp_path: Path,
) -> None:
    """Photos' OCR words are the item's, not a model's: the text goes with every try."""
    hit = SearchHit("uploads/alice/a.jpg", 0.5, matched=("text",), words=("PARKING",))
    index = FakeIndex([hit], model="model-b")
    models = iter(["model-a", "model-b"])
    svc = SearchService(
        tmp_path, FakeEncoder(), {"alice": index}.__getitem__, FakePages(), FakeAnswerer(),
        FakeMetrics(), model_of=lambda user: next(models),
    )  # fmt: skip
    [found] = asyncio.run(svc.images("alice", "parking", None, 1))
    assert index.texts == ["parking", "parking"]
    assert (found.matched, found.words) == (("text",), ("PARKING",))


def test_a_search_times_its_encode_and_its_index_lookup(tmp_path: Path) -> None:
    spans = Spans()
    index = FakeIndex([SearchHit("uploads/alice/a.jpg", 0.5, "a dog")])
    asyncio.run(service(tmp_path, index, FakeAnswerer()).images("alice", "dog", None, 1, spans))
    assert list(spans.seconds) == ["embed", "index"]
    assert all(s >= 0 for s in spans.seconds.values())
    assert spans.header().startswith("embed;dur=") and ", index;dur=" in spans.header()


def test_a_search_without_text_or_image_is_a_400(tmp_path: Path) -> None:
    with pytest.raises(BadRequest):
        asyncio.run(service(tmp_path, FakeIndex([]), FakeAnswerer()).images("alice", None, None, 1))


def _pdf_pages(tmp_path: Path, n: int) -> list[SearchHit]:
    hits = []
    for i in range(1, n + 1):
        page = tmp_path / "uploads" / "alice" / "pdfs" / f"manual_page_00{i}.jpg"
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_bytes(f"jpeg {i}".encode())
        hits.append(SearchHit(f"uploads/alice/pdfs/manual_page_00{i}.jpg", 0.5, "", 4.0 - i, 1 / i))
    return hits


def test_a_pdf_question_answers_from_the_best_pages_and_lists_the_pages(tmp_path: Path) -> None:
    hits = _pdf_pages(tmp_path, 2)
    answerer = FakeAnswerer()
    index = FakeIndex(hits)
    out = asyncio.run(service(tmp_path, index, answerer).pdf("alice", "reset?", 2, SearchMode.TEXT))
    assert out.answer == "page one says so" and out.reason is None
    assert [(p.doc, p.page, p.score) for p in out.pages] == [("manual", 1, 1.0), ("manual", 2, 0.5)]
    assert answerer.asked == [
        ("reset?", b"jpeg 1", f"text of {hits[0].item}"),
        ("reset?", b"jpeg 2", f"text of {hits[1].item}"),
    ]
    assert index.asked[0][3] == "text"
    assert out.top is out.pages[0]  # the answer named no page: rank 1


def test_the_page_gemini_names_becomes_the_top_result_even_below_top_k(tmp_path: Path) -> None:
    index = FakeIndex(_pdf_pages(tmp_path, 4))
    answerer = FakeAnswerer(page=3)
    out = asyncio.run(service(tmp_path, index, answerer).pdf("alice", "q", 1, SearchMode.FUSED))
    assert index.asked[0][2] == 3  # the best 3 are fetched for the answerer, whatever top_k
    assert [p.item for p in out.pages] == ["uploads/alice/pdfs/manual_page_001.jpg"]
    assert out.top is not None and out.top.item == "uploads/alice/pdfs/manual_page_003.jpg"
    assert [image for _, image, _ in answerer.asked] == [b"jpeg 1", b"jpeg 2", b"jpeg 3"]


@pytest.mark.parametrize("named", [None, 0, 4, 9])
def test_a_page_that_was_not_sent_falls_back_to_rank_one(tmp_path: Path, named: int | None) -> None:
    index = FakeIndex(_pdf_pages(tmp_path, 3))
    out = asyncio.run(
        service(tmp_path, index, FakeAnswerer(page=named)).pdf("alice", "q", 3, SearchMode.FUSED)
    )
    assert out.top is out.pages[0]


def test_a_pdf_question_without_pages_asks_nobody(tmp_path: Path) -> None:
    answerer = FakeAnswerer()
    out = asyncio.run(
        service(tmp_path, FakeIndex([]), answerer).pdf("alice", "q", 1, SearchMode.FUSED)
    )
    assert out.pages == [] and out.answer is None and answerer.asked == []


@pytest.mark.parametrize(("raw", "value"), [(None, 5), ("", 5), (" 7 ", 7), ("100", 100)])
def test_top_k_defaults_and_parses(raw: str | None, value: int) -> None:
    assert parse_top_k(raw, 5, 100) == value


@pytest.mark.parametrize("raw", ["0", "101", "ten", "-1"])
def test_a_bad_top_k_is_a_400(raw: str) -> None:
    with pytest.raises(BadRequest):
        parse_top_k(raw, 5, 100)


def test_queries_are_trimmed_bounded_and_modes_closed() -> None:
    assert clean_query("  dog ", 10) == "dog" and clean_query("   ", 10) is None
    with pytest.raises(LimitExceeded):
        clean_query("x" * 11, 10)
    assert parse_mode("image") is SearchMode.IMAGE
    with pytest.raises(BadRequest):
        parse_mode("semantic")


def test_a_page_ocr_left_without_text_says_why_in_the_pdf_results(tmp_path: Path) -> None:
    class NotedPages(FakePages):
        def meta(self, user: str, items: list[str]) -> list[dict[str, object] | None]:
            noted = {"text_source": "none", "ocr_note": "ocr_timeout"}
            return [{"doc": "manual", "page": i + 1, **(noted if i else {})} for i in range(2)]

    svc = SearchService(
        tmp_path, FakeEncoder(), {"alice": FakeIndex(_pdf_pages(tmp_path, 2))}.__getitem__,
        NotedPages(), FakeAnswerer(), FakeMetrics(),
    )  # fmt: skip
    out = asyncio.run(svc.pdf("alice", "q", 2, SearchMode.TEXT))
    assert [(p.text_source, p.ocr_note) for p in out.pages] == [
        ("text", None),
        ("none", "ocr_timeout"),
    ]
