"""The render child's reading of pages: OCR for pages without a text layer, and headings.

These run the real render subprocess and the real Tesseract (installed by
scripts/ensure-tesseract.sh; the tests that need it are skipped when it is missing).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from lumen.config import LimitSettings
from lumen.ingest.pdf import (
    OCR_FAILED_NOTE,
    OCR_TIMEOUT_NOTE,
    OCR_UNAVAILABLE_NOTE,
    RenderedPage,
    body_text_size,
    heading_text,
    needs_ocr,
    numbered_headings,
    ocr_note,
    outline_sections,
    render_pdf,
)
from tests.support.hostile import make_pdf
from tests.support.scanned import headed_pdf, scanned_pdf

needs_tesseract = pytest.mark.skipif(
    shutil.which("tesseract") is None, reason="tesseract-ocr not installed (make test installs it)"
)
SCANNED_TEXT = [
    "Descaling the kettle. Fill it with equal parts of vinegar and water, boil, then rinse.",
    "Warranty. The kettle is covered for twenty four months from the date of purchase.",
]


def _pdf(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "upload.pdf"
    path.write_bytes(data)
    return path


@needs_tesseract
def test_a_scanned_pdf_gets_its_text_from_ocr(tmp_path: Path) -> None:
    pages = render_pdf(
        _pdf(tmp_path, scanned_pdf(SCANNED_TEXT)), tmp_path / "out", "scan", LimitSettings()
    )

    assert [p.text_source for p in pages] == ["ocr", "ocr"]
    assert "vinegar" in pages[0].text.lower() and "warranty" in pages[1].text.lower()
    assert [p.note for p in pages] == ["", ""]


def test_a_page_with_a_text_layer_is_not_ocred(tmp_path: Path) -> None:
    pages = render_pdf(
        _pdf(tmp_path, make_pdf(["alpha page with enough words to count as text"])),
        tmp_path / "out",
        "doc",
        LimitSettings(pdf_ocr_lang="no_such_language"),  # OCR would fail if it ran
    )
    assert pages[0].text_source == "text" and pages[0].note == ""


def test_ocr_past_its_time_limit_still_gives_every_page_with_a_note(tmp_path: Path) -> None:
    limits = LimitSettings(pdf_ocr_timeout_s=0.001)
    pages = render_pdf(_pdf(tmp_path, scanned_pdf(SCANNED_TEXT)), tmp_path / "out", "s", limits)

    assert [p.page_number for p in pages] == [1, 2]
    assert all(p.path.is_file() for p in pages)
    assert [(p.text, p.text_source, p.note) for p in pages] == [("", "none", OCR_TIMEOUT_NOTE)] * 2
    assert "OCR ran out of time on 2 pages (1, 2)" in ocr_note(pages)


@needs_tesseract
def test_an_ocr_failure_never_fails_the_page(tmp_path: Path) -> None:
    limits = LimitSettings(pdf_ocr_lang="zzz")  # Tesseract has no such language: it fails
    pages = render_pdf(_pdf(tmp_path, scanned_pdf(SCANNED_TEXT[:1])), tmp_path / "out", "s", limits)

    assert [(p.text_source, p.note) for p in pages] == [("none", OCR_FAILED_NOTE)]
    assert pages[0].path.is_file()


def test_missing_tesseract_is_a_note_not_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))  # no tesseract on it
    pages = render_pdf(
        _pdf(tmp_path, scanned_pdf(SCANNED_TEXT[:1])), tmp_path / "out", "s", LimitSettings()
    )
    assert [(p.text_source, p.note) for p in pages] == [("none", OCR_UNAVAILABLE_NOTE)]


def test_ocr_can_be_switched_off(tmp_path: Path) -> None:
    pages = render_pdf(
        _pdf(tmp_path, scanned_pdf(SCANNED_TEXT[:1])),
        tmp_path / "out",
        "s",
        LimitSettings(pdf_ocr=False),
    )
    assert [(p.text, p.text_source, p.note) for p in pages] == [("", "none", "")]


def test_headings_are_the_lines_set_larger_than_the_body_text(tmp_path: Path) -> None:
    body = "Fill the kettle with vinegar and water. " * 30
    pages = render_pdf(
        _pdf(tmp_path, headed_pdf("Descaling the kettle", body)),
        tmp_path / "out",
        "h",
        LimitSettings(),
    )
    assert pages[0].headings == "Descaling the kettle"
    assert "vinegar" in pages[0].text


def test_heading_rules() -> None:
    lines = [
        (10.0, False, "body text " * 8),
        (10.0, False, "more body text " * 8),
        (14.0, False, "2.3 Running the tool"),
        (10.0, True, "Warning"),
        (10.0, True, "a long bold sentence " * 5),
        (14.0, False, "12"),
    ]
    assert body_text_size([lines]) == 10.0
    assert heading_text(lines, 10.0).split("\n") == ["2.3 Running the tool", "Warning"]
    assert heading_text(lines, 0.0) == ""


def test_needs_ocr_only_for_pages_without_real_text() -> None:
    assert needs_ocr("") and needs_ocr("  12  ") and needs_ocr("Scanned by XYZ")
    assert not needs_ocr("This page has a proper text layer with words.")


def test_ocr_note_names_the_pages_and_says_they_are_queued() -> None:
    def page(n: int, note: str) -> RenderedPage:
        return RenderedPage(Path(f"p{n}.jpg"), n, "", "0", "none", "", note)

    assert ocr_note([page(1, "")]) == ""
    note = ocr_note([page(n, OCR_TIMEOUT_NOTE) for n in range(1, 14)] + [page(14, OCR_FAILED_NOTE)])
    assert "OCR ran out of time on 13 pages (1, 2, 3, 4, 5, 6, 7, 8, 9, 10 and 3 more)" in note
    assert "OCR failed on 1 page (14)" in note and "queued without text" in note


def test_numbered_section_titles_are_headings_even_without_font_cues() -> None:
    # OCR text and bitmap (Type 3) fonts carry no sizes: the numbering says it
    text = "\n".join(
        [
            "Body text that runs on and on.",
            "2.4 Sizing parallel tasks.",
            "More body text.",
            "2.5.1",
            "External vertices",
            "1.2 Concept . . . . . . 7",  # a contents line
            "3.1 Installation 12",  # a contents line without leaders
            "1.1 the lower-case start is prose",
        ]
    )
    assert numbered_headings(text) == ["2.4 Sizing parallel tasks", "2.5.1 External vertices"]
    assert heading_text([], 0.0, text).split("\n") == [
        "2.4 Sizing parallel tasks",
        "2.5.1 External vertices",
    ]


def test_outline_sections_give_each_page_the_heading_path_it_sits_under() -> None:
    outline = [(1, "1 Intro", 2), (2, "1.1 Setup", 2), (2, "1.2 {\\tt Use}", 4), (1, "2 Next", 5)]
    assert outline_sections(outline, 6) == [
        "",
        "1 Intro / 1.1 Setup",
        "1 Intro / 1.1 Setup",
        "1 Intro / 1.1 Setup / 1.2 Use",
        "1 Intro / 1.2 Use / 2 Next",
        "2 Next",
    ]
    assert outline_sections([(1, "Past the end", 9)], 2) == ["", ""]


def test_rendered_pages_carry_their_outline_section(tmp_path: Path) -> None:
    import pymupdf

    doc = pymupdf.open()
    for words in ("Cleaning the kettle.", "Descaling with vinegar.", "Warranty terms."):
        doc.new_page().insert_text((72, 72), words)
    doc.set_toc([[1, "Care", 1], [2, "Descaling", 2], [1, "Warranty", 3]])
    pages = render_pdf(_pdf(tmp_path, doc.tobytes()), tmp_path / "out", "o", LimitSettings())
    assert [p.section for p in pages] == ["Care", "Care / Descaling", "Care / Descaling / Warranty"]
