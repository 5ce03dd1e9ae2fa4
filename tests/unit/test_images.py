"""Image sniffing, bounded decoding, EXIF orientation, draft mode and browser copies."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from lumen.errors import InvalidUpload, LimitExceeded
from lumen.ingest.images import (
    ImageFormat,
    image_end,
    open_image,
    sniff_format,
    to_browser_bytes,
    trim_after_end,
    validate_image_file,
)
from tests.support.hostile import bomb_png, corrupt_jpeg, make_heic, make_jpeg, make_png

MAX_PIXELS = 89_478_485


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (make_jpeg(), ImageFormat.JPEG),
        (make_png(), ImageFormat.PNG),
        (make_heic(), ImageFormat.HEIC),
        (b"hello, I am text", None),
        (b"", None),
    ],
)
def test_formats_are_sniffed_from_bytes(data: bytes, expected: ImageFormat | None) -> None:
    assert sniff_format(data[:64]) == expected


def test_avif_is_not_mistaken_for_heic() -> None:
    avif_head = b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf"
    assert sniff_format(avif_head) is None


def test_heif_with_generic_major_brand_and_heic_compatible_brand_is_heic() -> None:
    head = b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00mif1heic"
    assert sniff_format(head) is ImageFormat.HEIC


def test_jpeg_named_png_is_still_a_jpeg(tmp_path: Path) -> None:
    path = _write(tmp_path, "lies.png", make_jpeg())
    assert validate_image_file(path, MAX_PIXELS) is ImageFormat.JPEG


def test_heic_round_trip_gives_rgb_pixels_of_the_right_colour() -> None:
    img = open_image(make_heic(color=(40, 40, 200), size=(64, 48)), max_pixels=MAX_PIXELS)
    assert img.mode == "RGB"
    assert img.size == (64, 48)
    red, green, blue = img.getpixel((60, 44))
    assert blue > 150 and red < 90 and green < 90


def test_exif_orientation_is_applied_so_portrait_photos_stand_up() -> None:
    img = open_image(make_jpeg(size=(40, 20), orientation=6), max_pixels=MAX_PIXELS)
    assert img.size == (20, 40)


def test_jpeg_without_orientation_keeps_its_size(tmp_path: Path) -> None:
    img = open_image(_write(tmp_path, "a.jpg", make_jpeg(size=(40, 20))), max_pixels=MAX_PIXELS)
    assert img.size == (40, 20)


def test_draft_mode_decodes_a_big_jpeg_at_reduced_scale() -> None:
    big = make_jpeg(size=(4000, 3000))
    full = open_image(big, max_pixels=MAX_PIXELS)
    small = open_image(big, max_pixels=MAX_PIXELS, draft_size=(500, 500))
    assert full.size == (4000, 3000)
    assert small.size[0] <= 1000 and small.size[1] <= 750
    assert small.size[0] >= 500 and small.size[1] >= 375


def test_image_over_max_pixels_is_refused_naming_the_limit() -> None:
    with pytest.raises(LimitExceeded) as caught:
        open_image(make_jpeg(size=(100, 100)), max_pixels=9_999)
    assert caught.value.limit == "max_image_pixels"
    assert "100x100" in caught.value.message


def test_decompression_bomb_png_is_refused_without_decoding() -> None:
    with pytest.raises(LimitExceeded) as caught:
        open_image(bomb_png(), max_pixels=MAX_PIXELS)
    assert caught.value.limit == "max_image_pixels"


def test_pillow_bomb_guard_holds_even_when_our_limit_is_generous() -> None:
    with pytest.raises(LimitExceeded) as caught:
        open_image(bomb_png(), max_pixels=10**12)
    assert caught.value.limit == "max_image_pixels"
    assert Image.MAX_IMAGE_PIXELS is not None


def test_corrupt_jpeg_is_an_invalid_upload_with_a_clear_message() -> None:
    with pytest.raises(InvalidUpload, match="damaged or truncated"):
        open_image(corrupt_jpeg(), max_pixels=MAX_PIXELS)


def test_truncated_png_is_an_invalid_upload() -> None:
    data = make_png(size=(300, 300))
    with pytest.raises(InvalidUpload):
        open_image(data[: len(data) // 2], max_pixels=MAX_PIXELS)


def test_text_is_not_an_image() -> None:
    with pytest.raises(InvalidUpload, match="not a JPEG, PNG or HEIC"):
        open_image(b"hello, I am text" * 10, max_pixels=MAX_PIXELS)


def test_transparent_png_becomes_rgb_on_white() -> None:
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    out = io.BytesIO()
    rgba.save(out, format="PNG")
    img = open_image(out.getvalue(), max_pixels=MAX_PIXELS)
    assert img.mode == "RGB"
    assert img.getpixel((0, 0)) == (255, 255, 255)


def test_validate_reports_the_sniffed_format(tmp_path: Path) -> None:
    assert validate_image_file(_write(tmp_path, "x", make_png()), MAX_PIXELS) is ImageFormat.PNG
    assert validate_image_file(_write(tmp_path, "y", make_heic()), MAX_PIXELS) is ImageFormat.HEIC


def test_validate_refuses_text_named_jpg(tmp_path: Path) -> None:
    with pytest.raises(InvalidUpload, match="'notes.jpg' is not a JPEG"):
        validate_image_file(_write(tmp_path, "notes.jpg", b"text " * 20), MAX_PIXELS)


def test_validate_refuses_a_bomb_png(tmp_path: Path) -> None:
    with pytest.raises(LimitExceeded):
        validate_image_file(_write(tmp_path, "bomb.png", bomb_png()), MAX_PIXELS)


def test_validate_catches_png_checksum_damage(tmp_path: Path) -> None:
    data = bytearray(make_png(size=(64, 64)))
    data[-20] ^= 0xFF  # inside the last IDAT's payload or CRC
    with pytest.raises(InvalidUpload):
        validate_image_file(_write(tmp_path, "bad.png", bytes(data)), MAX_PIXELS)


def test_browser_gets_jpeg_and_png_bytes_unchanged(tmp_path: Path) -> None:
    jpeg, png = make_jpeg(), make_png()
    assert to_browser_bytes(_write(tmp_path, "a.jpg", jpeg), MAX_PIXELS) == (jpeg, "image/jpeg")
    assert to_browser_bytes(_write(tmp_path, "b.PNG", png), MAX_PIXELS) == (png, "image/png")


def test_browser_gets_heic_converted_to_jpeg(tmp_path: Path) -> None:
    data, mime = to_browser_bytes(_write(tmp_path, "c.heic", make_heic()), MAX_PIXELS)
    assert mime == "image/jpeg"
    assert sniff_format(data) is ImageFormat.JPEG
    assert Image.open(io.BytesIO(data)).size == (64, 48)


def test_browser_copy_of_text_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidUpload):
        to_browser_bytes(_write(tmp_path, "d.jpg", b"plain text"), MAX_PIXELS)


# ---- where an image ends: trailing bytes are never stored --------------------------


def _noisy(size: tuple[int, int] = (96, 64)) -> Image.Image:
    """Random pixels: entropy-coded data full of 0xFF bytes that must not end the scan."""
    return Image.frombytes("RGB", size, bytes(range(256)) * (size[0] * size[1] * 3 // 256))


def _jpeg(img: Image.Image, **options: object) -> bytes:
    out = io.BytesIO()
    img.save(out, format="JPEG", **options)
    return out.getvalue()


def _with_thumbnail(jpeg: bytes) -> bytes:
    """An APP1 segment that holds a whole JPEG (its own EOI) before the main image."""
    body = b"Exif\0\0" + make_jpeg((9, 9, 9), size=(16, 16))
    segment = b"\xff\xe1" + (len(body) + 2).to_bytes(2, "big") + body
    return jpeg[:2] + segment + jpeg[2:]


JPEG_VARIANTS = {
    "baseline": _jpeg(_noisy(), quality=95),
    "progressive": _jpeg(_noisy(), quality=95, progressive=True),
    "restart markers": _jpeg(_noisy(), quality=95, restart_marker_blocks=1),
    "thumbnail inside": _with_thumbnail(make_jpeg()),
}


@pytest.mark.parametrize("name", sorted(JPEG_VARIANTS))
def test_jpeg_ends_at_the_eoi_that_closes_the_main_image(name: str) -> None:
    data = JPEG_VARIANTS[name]
    assert image_end(data, ImageFormat.JPEG) == len(data)
    assert image_end(data + bytes(4096), ImageFormat.JPEG) == len(data)
    assert image_end(data + b"\xff\xd9junk", ImageFormat.JPEG) == len(data)


def test_jpeg_variants_really_hold_what_they_are_named_for() -> None:
    """Guards the corpus: stuffed 0xFF bytes, RST markers, a second EOI."""
    assert JPEG_VARIANTS["baseline"].count(b"\xff\x00") > 10
    assert b"\xff\xd0" in JPEG_VARIANTS["restart markers"]
    assert JPEG_VARIANTS["thumbnail inside"].count(b"\xff\xd9") == 2


def test_png_ends_after_the_iend_chunk() -> None:
    data = make_png()
    assert image_end(data + b"\x00" * 100 + b"IEND", ImageFormat.PNG) == len(data)


def test_heic_ends_after_its_last_well_formed_box() -> None:
    data = make_heic()
    assert image_end(data, ImageFormat.HEIC) == len(data)
    assert image_end(data + bytes(5000), ImageFormat.HEIC) == len(data)
    assert image_end(data + b"\xff" * 64, ImageFormat.HEIC) == len(data)


@pytest.mark.parametrize(
    ("data", "fmt"),
    [
        (make_jpeg()[:-2], ImageFormat.JPEG),
        (make_jpeg()[:300], ImageFormat.JPEG),
        (make_png()[:-12], ImageFormat.PNG),
    ],
)
def test_an_image_cut_short_has_no_end(data: bytes, fmt: ImageFormat) -> None:
    assert image_end(data, fmt) is None


def test_trim_cuts_zero_padding_and_keeps_a_decodable_image(tmp_path: Path) -> None:
    jpeg = make_jpeg()
    path = _write(tmp_path, "a.jpg", jpeg + bytes(1024 * 1024))
    assert trim_after_end(path, ImageFormat.JPEG) is True
    assert path.read_bytes() == jpeg
    assert open_image(path, max_pixels=MAX_PIXELS).size == (64, 48)


def test_trim_leaves_a_clean_or_cut_short_image_alone(tmp_path: Path) -> None:
    clean = _write(tmp_path, "a.png", make_png())
    short = _write(tmp_path, "b.jpg", make_jpeg()[:200])
    assert trim_after_end(clean, ImageFormat.PNG) is False
    assert trim_after_end(short, ImageFormat.JPEG) is False
    assert short.stat().st_size == 200
