"""Scanned (image-only) PDFs made in the test: text typeset, rasterised, re-assembled."""

from __future__ import annotations

import pymupdf

SCAN_DPI = 150


def scanned_pdf(pages: list[str], fontsize: float = 16) -> bytes:
    """A PDF whose pages are bitmaps of typeset text: no text layer at all."""
    typeset = pymupdf.open()
    for text in pages:
        page = typeset.new_page(width=595, height=842)
        page.insert_textbox(pymupdf.Rect(60, 70, 535, 780), text, fontsize=fontsize)
    scanned = pymupdf.open()
    for page in typeset:
        pix = page.get_pixmap(dpi=SCAN_DPI, colorspace=pymupdf.csGRAY)
        new = scanned.new_page(width=page.rect.width, height=page.rect.height)
        new.insert_image(new.rect, stream=pix.tobytes("png"))
    data: bytes = scanned.tobytes()
    assert all(not p.get_text().strip() for p in scanned)
    return data


def headed_pdf(heading: str, body: str) -> bytes:
    """One page: a large heading line over small body text."""
    doc = pymupdf.open()
    page = doc.new_page(width=595, height=842)
    page.insert_text((72, 90), heading, fontsize=22)
    page.insert_textbox(pymupdf.Rect(72, 120, 520, 780), body, fontsize=10)
    data: bytes = doc.tobytes()
    return data
