"""Tesseract OCR: reading a bitmap within a time limit, and words in uploaded photos.

PDF pages are read in the render child (`lumen.ingest.pdf`); photos in the Embedder, on a
pool of their own (`PhotoReader`). Either way OCR never fails the item: a time limit
passed, a Tesseract failure or a missing Tesseract is a note, and the text stays empty.

Photos go through a cheap pre-check first (`may_show_text`), on the image already decoded
for the model, so a photo without text costs what it cost before: a few milliseconds of
numpy on a bitmap of at most `CHECK_SIDE` pixels, and no Tesseract.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from lumen.ingest.images import open_image

if TYPE_CHECKING:
    from lumen.config import OcrSettings

OCR_TIMEOUT_NOTE = "ocr_timeout"
OCR_FAILED_NOTE = "ocr_failed"
OCR_UNAVAILABLE_NOTE = "ocr_unavailable"
OCR_BUSY_NOTE = "ocr_busy"  # the replica's OCR pool was full or too slow: not read
_OCR_LANG = re.compile(r"^[A-Za-z_]+(?:\+[A-Za-z_]+)*$")

# The pre-check looks at the image at most this large (longest side, pixels). The decode
# for the model is asked for at least `CHECK_DRAFT_SIDE` (JPEG draft mode), what a 224-pixel
# model gets anyway, so the check has pixels to look at and ViT-B-32 decodes as before.
CHECK_SIDE = 512
CHECK_DRAFT_SIDE = 224
_TILE = 16  # pixels per side of a tile of the check
_EDGE = 48
# A tile looks like print when strong edges cover this share of it, in both directions
# (letters have vertical and horizontal strokes), and a photo may show text when at least
# `_MIN_TEXT_TILES` tiles do. Measured in bench/ocr_photos.py and tests/unit/test_ocr.py.
# Past `_MAX_DENSITY` a tile is sensor noise or fine texture, not print: letters leave
# background between strokes (print measured 0.12-0.27, noise 0.45-0.58).
_MIN_DENSITY = 0.08
_MAX_DENSITY = 0.4
_MIN_TEXT_TILES = 3
_WORD = re.compile(r"\w+", re.UNICODE)


def valid_lang(lang: str) -> bool:
    """A Tesseract language list like `eng` or `eng+deu` (nothing else reaches its argv)."""
    return bool(_OCR_LANG.match(lang))


def ocr_page(image: Any, lang: str, timeout_s: float, config: str = "") -> tuple[str, str]:
    """(text, note) read by Tesseract from a bitmap; never raises.

    `note` is "" on success, else OCR_TIMEOUT_NOTE, OCR_UNAVAILABLE_NOTE or OCR_FAILED_NOTE.
    """
    if timeout_s <= 0:
        return "", OCR_TIMEOUT_NOTE
    if not valid_lang(lang):
        return "", OCR_FAILED_NOTE
    try:
        import pytesseract

        text = pytesseract.image_to_string(image, lang=lang, timeout=timeout_s, config=config)
    except ImportError:
        return "", OCR_UNAVAILABLE_NOTE
    except Exception as exc:  # noqa: BLE001 (OCR never fails a page)
        if type(exc).__name__ == "TesseractNotFoundError":
            return "", OCR_UNAVAILABLE_NOTE
        if "timeout" in str(exc).lower():
            return "", OCR_TIMEOUT_NOTE
        return "", OCR_FAILED_NOTE
    return str(text).strip(), ""


def may_show_text(img: Image.Image) -> bool:
    """Whether `img` may show printed words: the cheap test before Tesseract.

    Print is dense, high-contrast strokes in both directions at a small scale. On a grey
    copy about CHECK_SIDE pixels large (a JPEG's draft decode for the model is about that
    size already; a larger image is box-reduced by a whole factor), a 16 x 16 tile counts
    as print when strong edges (a grey-level step of `_EDGE`) cover `_MIN_DENSITY` of it
    across and down, but not more than `_MAX_DENSITY` (noise). Smooth colour fields, object
    outlines and sensor noise do not; foliage and gravel may (then Tesseract runs and finds
    nothing: time spent, no words lost).
    """
    factor = max(img.size) // CHECK_SIDE  # a box reduce: 3x cheaper than a resize
    small = img.reduce(factor) if factor > 1 else img
    return text_tiles(np.asarray(small.convert("L"), dtype=np.int16)) >= _MIN_TEXT_TILES


def text_tiles(grey: np.ndarray) -> int:
    """How many tiles of a grey bitmap look like print (see `may_show_text`)."""
    h, w = grey.shape
    rows, cols = (h - 1) // _TILE, (w - 1) // _TILE  # each pixel needs a neighbour
    if rows <= 0 or cols <= 0:
        return 0
    height, width = rows * _TILE, cols * _TILE
    across = np.abs(np.diff(grey[:height, : width + 1], axis=1)) >= _EDGE
    down = np.abs(np.diff(grey[: height + 1, :width], axis=0)) >= _EDGE
    per_tile = (rows, _TILE, cols, _TILE)
    x = across.reshape(per_tile).mean(axis=(1, 3))
    y = down.reshape(per_tile).mean(axis=(1, 3))
    print_like = (
        (x >= _MIN_DENSITY) & (y >= _MIN_DENSITY) & (x <= _MAX_DENSITY) & (y <= _MAX_DENSITY)
    )
    return int(np.count_nonzero(print_like))


def clean_words(raw: str, max_bytes: int) -> str:
    """Tesseract's text as words: one space between them, stray marks dropped, at most
    `max_bytes` of UTF-8, cut at a word. Textures read as words ("ii", "|") are what a
    photo's OCR adds as noise; a word needs two characters or a digit."""
    words = [w for w in _WORD.findall(raw) if len(w) >= 2 or w.isdigit()]
    out: list[str] = []
    used = 0
    for word in words:
        size = len(word.encode()) + (1 if out else 0)
        if used + size > max_bytes:
            break
        out.append(word)
        used += size
    return " ".join(out)


@dataclass(frozen=True)
class Words:
    """What OCR made of one photo: its words ("" when none), and a note when it failed."""

    text: str = ""
    note: str = ""


def ocr_outcome(words: Words | None) -> str:
    """How a photo went through OCR, for the metric: `no_text` (the pre-check kept Tesseract
    off), `words`, `empty` (Tesseract read nothing) or the note of a failure."""
    if words is None:
        return "no_text"
    return words.note or ("words" if words.text else "empty")


class PhotoReader:
    """Reads the words in photos with Tesseract: decode for OCR, one Tesseract call.

    Tesseract runs as a child process with one thread (`OMP_THREAD_LIMIT=1`, set in this
    process's environment, which its children inherit; the model's OpenMP pool read its
    settings when torch was loaded), so a replica's OCR pool of N threads uses N cores.
    """

    def __init__(self, settings: OcrSettings, max_pixels: int, psm: int = 11) -> None:
        self.settings = settings
        self.max_pixels = max_pixels
        # 11 = sparse text: words anywhere, in no particular order (signs, labels, receipts)
        self.config = f"--psm {psm}"
        os.environ["OMP_THREAD_LIMIT"] = "1"

    def read(self, path: Path, asked_at: float, check: bool = False) -> Words:
        """The words in the photo at `path`; never raises. `asked_at` (time.monotonic()) is
        when the caller asked: a photo that waited `max_wait_s` for a thread is not read.

        `check`: run the pre-check first (when the caller did not, on its own decode).
        """
        ocr = self.settings
        started = time.monotonic()
        if started - asked_at > ocr.max_wait_s:
            return Words(note=OCR_BUSY_NOTE)
        try:
            if check:  # on a small decode first, as the model's own would be
                side = (CHECK_DRAFT_SIDE, CHECK_DRAFT_SIDE)
                if not may_show_text(open_image(path, max_pixels=self.max_pixels, draft_size=side)):
                    return Words()
            draft = (max(1, ocr.max_side // 2),) * 2
            img = open_image(path, max_pixels=self.max_pixels, draft_size=draft)
            grey = img.convert("L")
            if max(grey.size) > ocr.max_side:
                grey.thumbnail((ocr.max_side, ocr.max_side), Image.Resampling.LANCZOS)
        except Exception:  # noqa: BLE001 - the model's decode reports bad files, not OCR
            return Words(note=OCR_FAILED_NOTE)
        left = started + ocr.timeout_s - time.monotonic()
        raw, note = ocr_page(grey, ocr.lang, left, self.config)
        return Words(clean_words(raw, ocr.max_text_bytes), note)
