"""The answerer behind `POST /search/pdf`: asks Gemini a question about one page image.

An answerer never raises: a missing key, a timeout or an API error becomes an `Answer`
with `text=None` and a `reason` a user can act on. Page images leave the server only
when a Gemini API key is configured.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from lumen.config import GeminiSettings

log = logging.getLogger(__name__)

NO_KEY_REASON = "no Gemini API key configured (set LUMEN_GEMINI__API_KEY)"
_MAX_PAGE_TEXT_CHARS = 8_000
_MAX_REASON_CHARS = 300

INSTRUCTION = (
    "You are shown one page of a user's document. Answer the question using only what"
    " this page shows. Be concise: a sentence or two, quoting figures or names exactly."
    " If the page does not contain the answer, say that the page does not answer it."
)


PAGES_INSTRUCTION = (
    "You are shown the {n} pages of a user's documents that a search ranked best for the"
    " question, numbered Page 1 to Page {n}. Answer the question using only what these pages"
    " show. Be concise: a sentence or two, quoting figures or names exactly. If no page"
    " contains the answer, say so. Then, on a last line of its own, write `PAGE: <number>`"
    " with the number of the page your answer comes from, or `PAGE: none`."
)
MAX_ANSWER_PAGES = 3
_PAGE_LINE = re.compile(r"^[ \t*`]*PAGE\s*:\s*(?:Page\s*)?(\w+)[ \t*`.]*$", re.I | re.M)


@dataclass(frozen=True)
class Answer:
    """What the answerer produced: `text`, or `None` and a `reason` saying why not.

    `page` is the 1-based number, among the pages sent, of the page the answer names; None
    when it names none, names one that was not sent, or only one page was asked about.
    """

    text: str | None
    reason: str | None = None
    page: int | None = None


@dataclass(frozen=True)
class PageInput:
    """One page sent to the answerer: its image, its extracted text, and a label."""

    image: bytes
    mime: str
    text: str | None
    label: str


class Answerer(Protocol):
    """Answers a question about one page image (plus its extracted text, when known)."""

    def answer(
        self, question: str, page_image: bytes, mime: str, page_text: str | None
    ) -> Answer: ...

    def answer_pages(self, question: str, pages: Sequence[PageInput]) -> Answer: ...


class NoKeyAnswerer:
    """The answerer used when no API key is set: it never contacts anyone."""

    def answer(self, question: str, page_image: bytes, mime: str, page_text: str | None) -> Answer:
        return Answer(text=None, reason=NO_KEY_REASON)

    def answer_pages(self, question: str, pages: Sequence[PageInput]) -> Answer:
        return Answer(text=None, reason=NO_KEY_REASON)


class GeminiAnswerer:
    """Asks a Gemini model through the `google-genai` SDK, bounded by `timeout_s`."""

    def __init__(self, settings: GeminiSettings) -> None:
        if not settings.api_key:
            raise ValueError("GeminiAnswerer needs an API key; use make_answerer()")
        self._model = settings.model
        self._timeout_s = settings.timeout_s
        self._client = genai.Client(
            api_key=settings.api_key, vertexai=False, http_options=http_options(settings)
        )

    def answer(self, question: str, page_image: bytes, mime: str, page_text: str | None) -> Answer:
        return self._ask(build_contents(question, page_image, mime, page_text))

    def answer_pages(self, question: str, pages: Sequence[PageInput]) -> Answer:
        """Gemini answers from the best pages and names the page it used (`Answer.page`)."""
        pages = list(pages)[:MAX_ANSWER_PAGES]
        return page_answer(self._ask(build_pages_contents(question, pages)), len(pages))

    def _ask(self, contents: types.Content) -> Answer:
        try:
            response = self._client.models.generate_content(model=self._model, contents=contents)
        except genai_errors.APIError as exc:
            return Answer(None, _truncate(f"Gemini error: {exc.code} {exc.status}: {exc.message}"))
        except Exception as exc:  # noqa: BLE001 (the contract is: never raise)
            if _is_timeout(exc):
                return Answer(None, f"Gemini timed out after {self._timeout_s:g} s")
            log.warning("Gemini request failed", exc_info=True)
            return Answer(None, _truncate(f"Gemini error: {type(exc).__name__}: {exc}"))
        return _answer_from(response)


def http_options(settings: GeminiSettings) -> types.HttpOptions:
    """Timeout (the SDK takes milliseconds), no retries, and the base URL when overridden."""
    return types.HttpOptions(
        base_url=settings.base_url,
        timeout=max(1, round(settings.timeout_s * 1000)),
        # One attempt, so a failing or hanging endpoint costs at most ~timeout_s.
        retry_options=types.HttpRetryOptions(attempts=1),
    )


def build_contents(
    question: str, page_image: bytes, mime: str, page_text: str | None
) -> types.Content:
    """The request: the page as an inline image, then the instruction and the question."""
    prompt = f"{INSTRUCTION}\n\nQuestion: {question.strip()}"
    if page_text and page_text.strip():
        excerpt = page_text.strip()[:_MAX_PAGE_TEXT_CHARS]
        prompt += f"\n\nText extracted from the page (may be imperfect):\n{excerpt}"
    image = types.Part.from_bytes(data=page_image, mime_type=mime)
    return types.Content(role="user", parts=[image, types.Part.from_text(text=prompt)])


def build_pages_contents(question: str, pages: Sequence[PageInput]) -> types.Content:
    """The request for several pages: per page a label, its image and its text; then the ask."""
    parts: list[types.Part] = []
    share = _MAX_PAGE_TEXT_CHARS // max(1, len(pages))
    for number, page in enumerate(pages, start=1):
        parts.append(types.Part.from_text(text=f"Page {number} ({page.label}):"))
        parts.append(types.Part.from_bytes(data=page.image, mime_type=page.mime))
        if page.text and page.text.strip():
            excerpt = page.text.strip()[:share]
            parts.append(
                types.Part.from_text(text=f"Text extracted from page {number}:\n{excerpt}")
            )
    prompt = PAGES_INSTRUCTION.format(n=len(pages)) + f"\n\nQuestion: {question.strip()}"
    parts.append(types.Part.from_text(text=prompt))
    return types.Content(role="user", parts=parts)


def page_answer(answer: Answer, sent: int) -> Answer:
    """`answer` with its `PAGE:` line taken out and read into `page` (None unless 1..sent)."""
    if answer.text is None:
        return answer
    matches = list(_PAGE_LINE.finditer(answer.text))
    if not matches:
        return answer
    last = matches[-1]
    text = (answer.text[: last.start()] + answer.text[last.end() :]).strip()
    value = last.group(1)
    page = int(value) if value.isdigit() and 1 <= int(value) <= sent else None
    return Answer(
        text or None, answer.reason if text else "Gemini named a page but gave no answer", page
    )


def make_answerer(settings: GeminiSettings) -> Answerer:
    """A Gemini-backed answerer when a key is configured, otherwise one that explains why not."""
    if settings.api_key:
        return GeminiAnswerer(settings)
    return NoKeyAnswerer()


def _answer_from(response: types.GenerateContentResponse) -> Answer:
    text = response.text
    if text and text.strip():
        return Answer(text=text.strip())
    return Answer(None, f"Gemini returned no text ({_finish_reason(response)})")


def _finish_reason(response: types.GenerateContentResponse) -> str:
    feedback = response.prompt_feedback
    if feedback is not None and feedback.block_reason is not None:
        return f"prompt blocked: {feedback.block_reason}"
    if response.candidates and response.candidates[0].finish_reason is not None:
        return f"finish reason: {response.candidates[0].finish_reason}"
    return "no candidates"


def _is_timeout(exc: BaseException) -> bool:
    # By class name: the SDK's transport (httpx, httpx2 or aiohttp) varies between releases.
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, TimeoutError) or any(
            "Timeout" in cls.__name__ for cls in type(seen).__mro__
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _truncate(reason: str) -> str:
    return reason if len(reason) <= _MAX_REASON_CHARS else reason[: _MAX_REASON_CHARS - 1] + "…"
