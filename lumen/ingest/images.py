"""Image formats and decoding: sniffing JPEG/PNG/HEIC from bytes, bounded opening, browser copies.

Formats are always sniffed from the file's bytes, never trusted from its name. Every open
goes through one place so the pixel limit, Pillow's decompression-bomb guard and EXIF
orientation are applied the same way everywhere.
"""

from __future__ import annotations

import functools
import io
import mmap
import os
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from lumen.errors import InvalidUpload, LimitExceeded

SNIFF_BYTES = 64

# ISO-BMFF `ftyp` brands that mean HEIF/HEIC stills or sequences (not AVIF).
_HEIC_MAJOR_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs"}
_HEIF_GENERIC_BRANDS = {b"mif1", b"msf1"}
_AVIF_BRANDS = {b"avif", b"avis"}


class ImageFormat(StrEnum):
    """The image formats lumen accepts."""

    JPEG = "jpeg"
    PNG = "png"
    HEIC = "heic"

    @property
    def extension(self) -> str:
        return {"jpeg": ".jpg", "png": ".png", "heic": ".heic"}[self.value]

    @property
    def extensions(self) -> frozenset[str]:
        """Every file extension that honestly names this format."""
        return {
            "jpeg": frozenset({".jpg", ".jpeg", ".jpe", ".jfif"}),
            "png": frozenset({".png"}),
            "heic": frozenset({".heic", ".heif", ".hif"}),
        }[self.value]

    @property
    def mime(self) -> str:
        return {"jpeg": "image/jpeg", "png": "image/png", "heic": "image/heic"}[self.value]


def sniff_format(head: bytes) -> ImageFormat | None:
    """Name the format of a file from its first bytes (at least 32 of them), or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return ImageFormat.JPEG
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return ImageFormat.PNG
    if _is_heic(head):
        return ImageFormat.HEIC
    return None


def _is_heic(head: bytes) -> bool:
    if len(head) < 12 or head[4:8] != b"ftyp":
        return False
    major = head[8:12]
    if major in _HEIC_MAJOR_BRANDS:
        return True
    if major in _AVIF_BRANDS:
        return False
    box_size = int.from_bytes(head[0:4], "big")
    compatible = {head[i : i + 4] for i in range(16, min(box_size, len(head)) - 3, 4)}
    if compatible & _HEIC_MAJOR_BRANDS:
        return True
    return major in _HEIF_GENERIC_BRANDS and not compatible & _AVIF_BRANDS


@functools.cache
def register_heif() -> None:
    """Teach Pillow to open HEIC/HEIF (once per process)."""
    import pillow_heif

    pillow_heif.register_heif_opener()


@contextmanager
def _pillow_errors(what: str) -> Iterator[None]:
    """Turn Pillow's many failure types into the project's errors."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise LimitExceeded(
            f"{what} has too many pixels to decode safely ({exc})", "max_image_pixels"
        ) from exc
    except UnidentifiedImageError as exc:
        raise InvalidUpload(f"{what} is not a JPEG, PNG or HEIC image we can read") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidUpload(f"{what} is damaged or truncated and cannot be decoded: {exc}") from exc


def _check_pixels(img: Image.Image, max_pixels: int, what: str) -> None:
    width, height = img.size
    if width * height > max_pixels:
        raise LimitExceeded(
            f"{what} is {width}x{height} pixels; the limit is {max_pixels} pixels",
            "max_image_pixels",
        )


def open_image(
    source: Path | bytes,
    *,
    max_pixels: int,
    draft_size: tuple[int, int] | None = None,
    what: str = "the image",
) -> Image.Image:
    """Decode `source` to an upright RGB image, refusing oversized or damaged input.

    The pixel count is checked from the header, before any pixel is decoded. With
    `draft_size`, JPEGs decode at the smallest DCT scale that still covers that size.
    """
    register_heif()
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    with _pillow_errors(what), Image.open(stream) as img:
        _check_pixels(img, max_pixels, what)
        if draft_size is not None and img.format == "JPEG":
            img.draft("RGB", draft_size)
        img.load()
        upright = _exif_upright(img)
        return _to_rgb(upright)


def _exif_upright(img: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(img)
    except (OSError, SyntaxError, ValueError, KeyError, TypeError):
        return img.copy()  # broken EXIF: keep the pixels as stored


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


def read_head(path: Path, size: int = SNIFF_BYTES) -> bytes:
    with path.open("rb") as handle:
        return handle.read(size)


def validate_image_file(path: Path, max_pixels: int, *, what: str | None = None) -> ImageFormat:
    """Check that `path` is a JPEG/PNG/HEIC whose header is sane and under `max_pixels`.

    Cheap: reads headers (and PNG chunk checksums), never decodes pixels. A file whose
    compressed body is damaged can still pass; `open_image` reports that later.
    """
    what = what or f"'{path.name}'"
    fmt = sniff_format(read_head(path))
    if fmt is None:
        raise InvalidUpload(f"{what} is not a JPEG, PNG or HEIC image")
    register_heif()
    with _pillow_errors(what), Image.open(path) as img:
        _check_pixels(img, max_pixels, what)
        if fmt is not ImageFormat.HEIC:
            img.verify()
    return fmt


# A marker inside JPEG entropy-coded data: 0xFF not followed by a stuffed 0x00, a restart
# marker (RST0-7) or another 0xFF fill byte.
_JPEG_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_JPEG_STANDALONE = {0x01, *range(0xD0, 0xD8)}
_BOX_TYPE = re.compile(rb"[A-Za-z0-9 ]{4}")


def image_end(data: bytes | mmap.mmap, fmt: ImageFormat) -> int | None:
    """The length of the image in `data` up to its end, or None when no end can be found.

    JPEG ends after the EOI marker that closes the main image (markers inside EXIF
    thumbnails or entropy-coded scans do not count), PNG after the IEND chunk's CRC, HEIC
    after its last well-formed top-level box. None means "damaged or cut short": the caller
    keeps the bytes and lets validation judge them.
    """
    if fmt is ImageFormat.JPEG:
        return _jpeg_end(data)
    if fmt is ImageFormat.PNG:
        return _png_end(data)
    return _bmff_end(data)


def _jpeg_end(data: bytes | mmap.mmap) -> int | None:
    pos, size = 2, len(data)  # after SOI
    while pos < size:
        if data[pos] != 0xFF:
            return None
        while pos < size and data[pos] == 0xFF:
            pos += 1
        if pos >= size:
            return None
        marker = data[pos]
        pos += 1
        if marker == 0xD9:
            return pos
        if marker in _JPEG_STANDALONE:
            continue
        if pos + 2 > size:
            return None
        pos += int.from_bytes(data[pos : pos + 2], "big")
        if marker == 0xDA:  # start of scan: entropy-coded data runs to the next marker
            found = _JPEG_SCAN_END.search(data, pos)
            if found is None:
                return None
            pos = found.start()
    return None


def _png_end(data: bytes | mmap.mmap) -> int | None:
    pos, size = 8, len(data)  # after the signature
    while pos + 8 <= size:
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = bytes(data[pos + 4 : pos + 8])
        pos += 12 + length
        if kind == b"IEND":
            return pos if pos <= size else None
    return None


def _bmff_end(data: bytes | mmap.mmap) -> int | None:
    pos, size = 0, len(data)
    while pos + 8 <= size:
        box = int.from_bytes(data[pos : pos + 4], "big")
        if not _BOX_TYPE.fullmatch(bytes(data[pos + 4 : pos + 8])):
            break
        if box == 0:  # the last box runs to the end of the file
            return size
        if box == 1 and pos + 16 <= size:
            box = int.from_bytes(data[pos + 8 : pos + 16], "big")
        if box < 8 or pos + box > size:
            break
        pos += box
    return pos or None


def trim_after_end(path: Path, fmt: ImageFormat) -> bool:
    """Cut whatever follows the image's end marker in `path`; True when bytes were cut.

    Zero padding or junk after a JPEG's EOI or a PNG's IEND decodes to the same picture, so
    keeping it would only let a small upload (such padding compresses to nothing) take a
    large amount of disk.
    """
    size = path.stat().st_size
    if size == 0:
        return False
    with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as m:
        end = image_end(m, fmt)
    if end is None or end >= size:
        return False
    os.truncate(path, end)
    return True


def to_browser_bytes(path: Path, max_pixels: int) -> tuple[bytes, str]:
    """Return (bytes, mime) a browser can show: JPEG/PNG as stored, HEIC re-encoded as JPEG."""
    fmt = sniff_format(read_head(path))
    if fmt is None:
        raise InvalidUpload(f"'{path.name}' is not a JPEG, PNG or HEIC image")
    if fmt is not ImageFormat.HEIC:
        return path.read_bytes(), fmt.mime
    img = open_image(path, max_pixels=max_pixels, what=f"'{path.name}'")
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=90)
    return out.getvalue(), ImageFormat.JPEG.mime
