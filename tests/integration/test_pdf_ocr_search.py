"""A scanned PDF, made in the test, is answered through the text Tesseract read from it.

The tiny CLIP cannot read, so the right page can only come first through its OCR text.
"""

from __future__ import annotations

import shutil

import httpx
import pytest

from tests.conftest import Service
from tests.support.http import upload_pdf, wait_settled
from tests.support.scanned import scanned_pdf

pytestmark = pytest.mark.skipif(
    shutil.which("tesseract") is None, reason="tesseract-ocr not installed (make test installs it)"
)

PAGES = [
    "Warranty. The kettle is covered for twenty four months from the date of purchase.",
    "Descaling. Fill the kettle with equal parts of vinegar and water, boil, then rinse.",
    "Safety. Never immerse the base in water and unplug it before cleaning the outside.",
]
QUESTIONS = [
    ("How long is the warranty?", 1),
    ("How do I descale it with vinegar?", 2),
    ("Can I put the base under water?", 3),
]


def _ask(service: Service, h: dict[str, str], query: str, mode: str) -> httpx.Response:
    with service.client() as c:
        return c.post("/search/pdf", headers=h, data={"query": query, "mode": mode, "top_k": "3"})


def test_a_scanned_pdf_is_answered_through_its_ocr_text(service: Service) -> None:
    _, h = service.new_user("scan")
    r = upload_pdf(service, h, scanned_pdf(PAGES), name="scanned-kettle.pdf")
    assert r.status_code == 200, r.text
    body = r.json()
    pages = body["queued"]
    assert len(pages) == 3 and "OCR" not in body["message"]  # every page was read
    wait_settled(service, h, len(pages))

    hits = {"text": 0, "fused": 0}
    for mode in hits:
        for question, number in QUESTIONS:
            r = _ask(service, h, question, mode)
            assert r.status_code == 200, r.text
            top = r.json()["top_result"]
            assert top["text_source"] == "ocr"
            hits[mode] += top["filename"] == pages[number - 1] and top["page"] == number
    # Text alone must find every page; fused adds the tiny CLIP's noise (it cannot read),
    # which may outvote a one-word match.
    assert hits["text"] == len(QUESTIONS)
    assert hits["fused"] >= len(QUESTIONS) - 1
