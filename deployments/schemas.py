"""HTTP response models: the spec's shapes exactly, plus the additions in docs/api.md."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class MessageResponse(BaseModel):
    message: str


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = "bearer"


class UploadResponse(BaseModel):
    message: str
    queued: list[str]
    duplicates: dict[str, str] = Field(
        default_factory=dict, description="new name -> the item already holding those bytes"
    )
    skipped: dict[str, str] = Field(default_factory=dict, description="ZIP member -> reason")


class DoneResponse(BaseModel):
    done_images: list[str]


class SearchResult(BaseModel):
    filename: str
    caption: str
    similarity: float
    image_path: str
    image_url: str
    # why it matched (issue 16): "image" (among CLIP's best top_k), "text" (words OCR read
    # in the photo match the query), and those words as OCR read them
    matched: list[str] = Field(default_factory=lambda: ["image"])
    matched_words: list[str] = Field(default_factory=list)


class SearchResponse(BaseModel):
    results: list[SearchResult]


class PageResult(BaseModel):
    filename: str
    similarity: float
    image_url: str
    doc: str | None
    page: int | None
    text_score: float | None
    score: float | None
    # where the page's text came from: "text" (its text layer), "ocr" or "none" (issue 16)
    text_source: str | None = None
    # why OCR left the page without text: "ocr_timeout", "ocr_failed", "ocr_unavailable"
    ocr_note: str | None = None


class PdfSearchResponse(BaseModel):
    query: str
    top_result: PageResult | None
    gemini_answer: str | None
    gemini_reason: str | None = None
    message: str | None = None
    results: list[PageResult]


class StreamTicketResponse(BaseModel):
    ticket: str
    expires_in: int = Field(description="seconds within which the ticket must open a stream")


class UsageResponse(BaseModel):
    """What the caller stores against their quota (0 = unlimited)."""

    bytes: int
    items: int
    max_bytes: int
    max_items: int


class RetryResponse(BaseModel):
    message: str
    requeued: list[str]


class ShardsResponse(BaseModel):
    """Each IndexShard: node, estimated bytes held against its budget, spaces, counters,
    its largest spaces; or `status` busy/unreachable when it did not answer in time."""

    shards: list[dict[str, Any]]


class ReindexResponse(BaseModel):
    """The deployed model, the job's target (null: none pending), the users whose space
    still holds another model, and each user's re-embedding progress."""

    model: str
    job: str | None
    users_on_other_models: list[str]
    users: dict[str, dict[str, Any]]
