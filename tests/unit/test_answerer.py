"""The answerer drives the real google-genai client against a local fake Gemini endpoint."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from lumen.answerer import NO_KEY_REASON, Answer, NoKeyAnswerer, PageInput, make_answerer
from lumen.config import GeminiSettings
from tests.support.fake_gemini import FakeGemini, fake_gemini

PAGE = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4  # stands in for a rendered page
QUESTION = "What is the notice period for termination?"


@pytest.fixture
def gemini() -> Iterator[FakeGemini]:
    with fake_gemini() as fake:
        yield fake


def _settings(fake: FakeGemini, **overrides: Any) -> GeminiSettings:
    values: dict[str, Any] = {
        "api_key": "test-key-123",
        "model": "gemini-test",
        "base_url": fake.base_url,
        "timeout_s": 5.0,
    }
    return GeminiSettings(**(values | overrides))


def test_request_carries_the_page_image_the_question_and_the_key(gemini: FakeGemini) -> None:
    gemini.respond_with("Thirty days.")
    make_answerer(_settings(gemini)).answer(QUESTION, PAGE, "image/png", None)

    (request,) = gemini.requests
    assert request.path.endswith("/models/gemini-test:generateContent")
    assert request.api_key == "test-key-123"
    assert request.inline_images == [("image/png", PAGE)]
    assert QUESTION in request.prompt_text
    assert "only" in request.prompt_text.lower()


def test_page_text_is_sent_along_when_known(gemini: FakeGemini) -> None:
    make_answerer(_settings(gemini)).answer(QUESTION, PAGE, "image/jpeg", "Notice: 30 days.")

    assert gemini.requests[0].inline_images == [("image/jpeg", PAGE)]
    assert "Notice: 30 days." in gemini.requests[0].prompt_text


def test_text_answer_comes_back(gemini: FakeGemini) -> None:
    gemini.respond_with("  The notice period is thirty days.\n")

    answer = make_answerer(_settings(gemini)).answer(QUESTION, PAGE, "image/png", None)

    assert answer == Answer(text="The notice period is thirty days.", reason=None)


@pytest.mark.parametrize("status", [400, 500, 503])
def test_http_error_becomes_a_reason_not_an_exception(gemini: FakeGemini, status: int) -> None:
    gemini.fail_with(status)

    answer = make_answerer(_settings(gemini)).answer(QUESTION, PAGE, "image/png", None)

    assert answer.text is None
    assert answer.reason is not None
    assert answer.reason.startswith("Gemini error:")
    assert str(status) in answer.reason


def test_server_errors_are_not_retried(gemini: FakeGemini) -> None:
    gemini.fail_with(503)

    make_answerer(_settings(gemini)).answer(QUESTION, PAGE, "image/png", None)

    assert len(gemini.requests) == 1


def test_hanging_endpoint_times_out_with_a_reason(gemini: FakeGemini) -> None:
    gemini.hang()
    answerer = make_answerer(_settings(gemini, timeout_s=1))

    started = time.monotonic()
    answer = answerer.answer(QUESTION, PAGE, "image/png", None)
    elapsed = time.monotonic() - started

    assert answer.text is None
    assert answer.reason == "Gemini timed out after 1 s"
    assert elapsed < 1 + 2


def test_unreachable_endpoint_becomes_a_reason() -> None:
    with fake_gemini() as gone:
        base_url = gone.base_url  # the port is closed once the block ends
    settings = GeminiSettings(api_key="k", base_url=base_url, timeout_s=2)

    answer = make_answerer(settings).answer(QUESTION, PAGE, "image/png", None)

    assert answer.text is None
    assert answer.reason is not None
    assert answer.reason.startswith("Gemini error:")


def test_without_a_key_no_request_is_made_and_the_reason_says_how_to_fix_it(
    gemini: FakeGemini,
) -> None:
    answerer = make_answerer(_settings(gemini, api_key=None))

    answer = answerer.answer(QUESTION, PAGE, "image/png", None)

    assert isinstance(answerer, NoKeyAnswerer)
    assert answer == Answer(text=None, reason=NO_KEY_REASON)
    assert "LUMEN_GEMINI__API_KEY" in NO_KEY_REASON
    assert gemini.requests == []


# --- issue 16 part 5: Gemini answers from the best 3 pages and names the page it used ---

PAGES = [
    PageInput(b"image-one", "image/jpeg", "Notice period: thirty days.", "contract, page 4"),
    PageInput(b"image-two", "image/jpeg", None, "contract, page 5"),
    PageInput(b"image-three", "image/jpeg", "Signatures.", "contract, page 9"),
]


def test_the_best_pages_go_to_gemini_with_their_labels_and_texts(gemini: FakeGemini) -> None:
    gemini.respond_with("Thirty days.\nPAGE: 1")
    make_answerer(_settings(gemini)).answer_pages(QUESTION, PAGES)

    (request,) = gemini.requests
    assert request.inline_images == [("image/jpeg", p.image) for p in PAGES]
    prompt = request.prompt_text
    assert "Page 1 (contract, page 4)" in prompt and "Page 3 (contract, page 9)" in prompt
    assert "Notice period: thirty days." in prompt and QUESTION in prompt
    assert "PAGE:" in prompt


@pytest.mark.parametrize(
    ("reply", "text", "page"),
    [
        ("The notice period is thirty days.\nPAGE: 2", "The notice period is thirty days.", 2),
        ("Thirty days.\n**PAGE: 3**", "Thirty days.", 3),
        ("Thirty days.\npage: Page 1.", "Thirty days.", 1),
        ("Thirty days.", "Thirty days.", None),  # names no page
        ("Thirty days.\nPAGE: none", "Thirty days.", None),
        ("Thirty days.\nPAGE: 7", "Thirty days.", None),  # a page that was not sent
        ("Thirty days.\nPAGE: 0", "Thirty days.", None),
    ],
)
def test_the_named_page_is_read_and_its_line_taken_out(
    gemini: FakeGemini, reply: str, text: str, page: int | None
) -> None:
    gemini.respond_with(reply)
    answer = make_answerer(_settings(gemini)).answer_pages(QUESTION, PAGES)
    assert (answer.text, answer.page, answer.reason) == (text, page, None)


def test_a_reply_with_only_a_page_line_is_no_answer(gemini: FakeGemini) -> None:
    gemini.respond_with("PAGE: 2")
    answer = make_answerer(_settings(gemini)).answer_pages(QUESTION, PAGES)
    assert answer.text is None and answer.page == 2 and answer.reason


def test_an_error_on_the_pages_request_is_a_reason_not_an_exception(gemini: FakeGemini) -> None:
    gemini.fail_with(503)
    answer = make_answerer(_settings(gemini)).answer_pages(QUESTION, PAGES)
    assert answer.text is None and answer.page is None and "503" in (answer.reason or "")


def test_without_a_key_nobody_is_asked_about_pages() -> None:
    assert NoKeyAnswerer().answer_pages(QUESTION, PAGES) == Answer(None, NO_KEY_REASON)
