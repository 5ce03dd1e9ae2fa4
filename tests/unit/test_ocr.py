"""Words in photos: the pre-check that keeps Tesseract off photos without text, and the reader
that never fails an item (real Tesseract; the tests that need it skip when it is missing)."""

from __future__ import annotations

import io
import os
import shutil
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from lumen.config import OcrSettings
from lumen.ingest.images import open_image
from lumen.ocr import (
    CHECK_DRAFT_SIDE,
    OCR_BUSY_NOTE,
    OCR_FAILED_NOTE,
    OCR_TIMEOUT_NOTE,
    OCR_UNAVAILABLE_NOTE,
    PhotoReader,
    Words,
    clean_words,
    may_show_text,
)
from tests.support.hostile import noisy_jpegs
from tests.support.photos import jpeg, plain_photo, png, receipt, sign
from tests.support.tiny_clip import COLORS, SHAPES, draw_shape

needs_tesseract = pytest.mark.skipif(
    shutil.which("tesseract") is None, reason="tesseract-ocr not installed (make test installs it)"
)
MAX_PIXELS = 89_478_485


def as_the_embedder_decodes(img: Image.Image) -> Image.Image:
    """A JPEG of `img` decoded as the Embedder decodes for a 224-pixel model (draft mode)."""
    side = CHECK_DRAFT_SIDE
    return open_image(jpeg(img), max_pixels=MAX_PIXELS, draft_size=(side, side))


@pytest.mark.parametrize(
    "picture",
    [
        sign("PARKING 5 EUR"),
        sign("PARKING 5 EUR", size=(1600, 1200), font_px=40),  # smaller words, larger photo
        receipt(),
    ],
    ids=["sign", "small-sign", "receipt"],
)
def test_photos_with_words_pass_the_pre_check(picture: Image.Image) -> None:
    assert may_show_text(as_the_embedder_decodes(picture))


def test_photos_without_words_never_reach_tesseract() -> None:
    shapes = [draw_shape(c, s, size=192, seed=7) for c in COLORS for s in SHAPES]
    photos = [plain_photo(seed, size=(2000, 1500)) for seed in range(4)]
    assert not any(may_show_text(as_the_embedder_decodes(p)) for p in [*shapes, *photos])
    assert not may_show_text(Image.new("RGB", (8, 8), "white"))  # too small to hold a tile


def test_noise_and_fine_texture_never_reach_tesseract() -> None:
    """Random-noise JPEGs (the chaos tests' uploads) have strong edges everywhere: no print."""
    noise = [Image.open(io.BytesIO(b)) for b in noisy_jpegs(4, side=160, seed=3).values()]
    noise += [Image.open(io.BytesIO(b)) for b in noisy_jpegs(2, side=512, seed=4).values()]
    assert not any(may_show_text(p) for p in noise)


def test_words_are_kept_as_words_and_bounded_in_bytes_cut_at_a_word() -> None:
    raw = "PARKING  5\nEUR | ~ — i\n\nZone  B"
    assert clean_words(raw, 100) == "PARKING 5 EUR Zone"
    assert clean_words("ÉCOLE école " * 50, 20) == "ÉCOLE école ÉCOLE"
    assert len(clean_words("word " * 10_000, 2048).encode()) <= 2048


def _reader(**ocr: object) -> PhotoReader:
    return PhotoReader(OcrSettings(**ocr), MAX_PIXELS)  # type: ignore[arg-type]


def _saved(tmp_path: Path, img: Image.Image, name: str = "p.jpg") -> Path:
    path = tmp_path / name
    path.write_bytes(jpeg(img))
    return path


@needs_tesseract
def test_the_reader_reads_the_words_on_a_sign(tmp_path: Path) -> None:
    words = _reader().read(_saved(tmp_path, sign("PARKING 5 EUR")), time.monotonic())
    assert words == Words("PARKING 5 EUR", "")


@needs_tesseract
def test_a_photo_the_pre_check_turns_away_costs_no_tesseract_call(tmp_path: Path) -> None:
    path = _saved(tmp_path, plain_photo(1))
    assert _reader().read(path, time.monotonic(), check=True) == Words()


@needs_tesseract
def test_ocr_past_its_time_limit_is_a_note_not_an_error(tmp_path: Path) -> None:
    words = _reader(timeout_s=0.001).read(_saved(tmp_path, receipt()), time.monotonic())
    assert words == Words("", OCR_TIMEOUT_NOTE)


def test_a_photo_that_waited_too_long_for_a_thread_is_not_read(tmp_path: Path) -> None:
    long_ago = time.monotonic() - 100
    words = _reader(max_wait_s=5).read(_saved(tmp_path, sign("EXIT")), long_ago)
    assert words == Words("", OCR_BUSY_NOTE)


def test_an_unreadable_photo_is_a_note_for_ocr(tmp_path: Path) -> None:
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"\xff\xd8 not a jpeg")
    assert _reader().read(path, time.monotonic()) == Words("", OCR_FAILED_NOTE)


def test_missing_tesseract_is_a_note_not_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))  # no tesseract on it
    words = _reader().read(_saved(tmp_path, sign("EXIT")), time.monotonic())
    assert words == Words("", OCR_UNAVAILABLE_NOTE)


def test_tesseract_runs_single_threaded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_THREAD_LIMIT", "8")  # restored after the test
    _reader()
    assert os.environ["OMP_THREAD_LIMIT"] == "1"  # what its Tesseract children inherit


def test_a_language_list_that_is_not_one_is_refused() -> None:
    with pytest.raises(ValueError, match="ocr.lang"):
        OcrSettings(lang="eng; rm -rf /")


def test_a_full_size_png_is_checked_on_a_reduced_copy() -> None:
    # PNGs (screenshots) have no draft mode: the model's decode is full size
    small_words = sign("PARKING 5 EUR", size=(1600, 1200), font_px=40)
    words = open_image(png(small_words), max_pixels=MAX_PIXELS)
    plain = open_image(png(plain_photo(1, size=(2000, 1500))), max_pixels=MAX_PIXELS)
    assert may_show_text(words) and not may_show_text(plain)
