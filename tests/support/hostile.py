"""Builders for test uploads: good images, ZIPs and PDFs, and a corpus of hostile ones.

Every builder returns bytes and runs in well under a second. `HOSTILE_CASES` names each
hostile upload with the outcome the service must produce, so unit tests and the HTTP
integration tests push the same corpus through their own layer.
"""

from __future__ import annotations

import io
import random
import stat
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pymupdf
from PIL import Image, ImageDraw

Color = tuple[int, int, int]

# ---- good inputs ------------------------------------------------------------------


def make_image(color: Color = (200, 40, 40), size: tuple[int, int] = (64, 48)) -> Image.Image:
    img = Image.new("RGB", size, color)
    ImageDraw.Draw(img).rectangle((0, 0, size[0] // 3, size[1] // 3), fill=(255, 255, 255))
    return img


def make_jpeg(
    color: Color = (200, 40, 40),
    size: tuple[int, int] = (64, 48),
    text: str | None = None,
    orientation: int | None = None,
) -> bytes:
    img = make_image(color, size)
    if text:
        ImageDraw.Draw(img).text((4, 4), text, fill=(0, 0, 0))
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=90, exif=exif.tobytes())
    return out.getvalue()


def make_png(color: Color = (40, 200, 40), size: tuple[int, int] = (64, 48)) -> bytes:
    out = io.BytesIO()
    make_image(color, size).save(out, format="PNG")
    return out.getvalue()


def make_heic(color: Color = (40, 40, 200), size: tuple[int, int] = (64, 48)) -> bytes:
    import pillow_heif

    pillow_heif.register_heif_opener()
    out = io.BytesIO()
    make_image(color, size).save(out, format="HEIF", quality=90)
    return out.getvalue()


def make_zip(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


def noisy_jpegs(n: int, side: int = 256, seed: int = 0) -> dict[str, bytes]:
    """`n` JPEGs of random noise (`img_00000.jpg`, ...): distinct content, slow to compress."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        arr = rng.integers(0, 255, size=(side, side, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=80)
        out[f"img_{i:05d}.jpg"] = buf.getvalue()
    return out


def make_pdf(pages: list[str]) -> bytes:
    """A PDF with one page per string: the text plus a drawn rectangle and circle."""
    doc = pymupdf.open()
    for number, text in enumerate(pages, start=1):
        page = doc.new_page(width=595, height=842)
        page.insert_text((72, 100), text, fontsize=18)
        page.draw_rect(pymupdf.Rect(72, 150, 300, 300), color=(0, 0, 1), fill=(1, 0.8, 0))
        page.draw_circle((400, 400), 40 + number * 5, color=(1, 0, 0))
    data: bytes = doc.tobytes()
    doc.close()
    return data


# ---- byte surgery -----------------------------------------------------------------


def _entries(data: bytes) -> list[tuple[int, int]]:
    """(central header offset, local header offset) for every member."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        pos, count = archive.start_dir, len(archive.infolist())
    found = []
    for _ in range(count):
        assert data[pos : pos + 4] == b"PK\x01\x02"
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", data, pos + 28)
        found.append((pos, struct.unpack_from("<I", data, pos + 42)[0]))
        pos += 46 + name_len + extra_len + comment_len
    return found


def _set_encrypted_flag(data: bytes) -> bytes:
    buf = bytearray(data)
    for central, local in _entries(data):
        for offset in (central + 8, local + 6):
            (flags,) = struct.unpack_from("<H", buf, offset)
            struct.pack_into("<H", buf, offset, flags | 0x1)
    return bytes(buf)


def _patch_sizes(data: bytes, uncompressed: int, only_first: bool = False) -> bytes:
    buf = bytearray(data)
    entries = _entries(data)
    for central, local in entries[:1] if only_first else entries:
        struct.pack_into("<I", buf, central + 24, uncompressed)
        struct.pack_into("<I", buf, local + 22, uncompressed)
    return bytes(buf)


# ---- hostile ZIPs -----------------------------------------------------------------


def zip_slip() -> bytes:
    return make_zip({"../../evil.jpg": make_jpeg(), "good.jpg": make_jpeg()})


def absolute_path_zip() -> bytes:
    return make_zip(
        {"/tmp/evil.jpg": make_jpeg(), "C:/evil2.jpg": make_jpeg(), "good.jpg": make_jpeg()}
    )


def symlink_zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        link = zipfile.ZipInfo("link.jpg")
        link.create_system = 3
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
        archive.writestr("good.jpg", make_jpeg())
    return out.getvalue()


def zip_bomb(megabytes: int = 50) -> bytes:
    """50 MB of zeros deflated to ~50 KB: a compression ratio near 1000."""
    return make_zip({"bomb.jpg": b"\xff\xd8\xff" + bytes(megabytes * 1024 * 1024)})


def lying_size_zip() -> bytes:
    """The first member's headers declare 1000 bytes; it really inflates to 20 MB."""
    liar = b"\xff\xd8\xff" + bytes(20 * 1024 * 1024)
    return _patch_sizes(make_zip({"liar.jpg": liar, "good.jpg": make_jpeg()}), 1000, True)


def declared_huge_zip() -> bytes:
    """Three tiny members whose headers each claim 4 GiB (12 GiB in all)."""
    jpeg = make_jpeg()
    return _patch_sizes(make_zip({f"{i}.jpg": jpeg for i in range(3)}), 0xFFFF_FFF0)


def many_members_zip(count: int = 10_001) -> bytes:
    return make_zip({f"f{i}.txt": b"" for i in range(count)}, compression=zipfile.ZIP_STORED)


def nested_zip() -> bytes:
    return make_zip({"inner.zip": make_zip({"a.jpg": make_jpeg()}), "good.jpg": make_jpeg()})


def encrypted_zip() -> bytes:
    return _set_encrypted_flag(make_zip({"secret.jpg": make_jpeg()}))


def truncated_zip() -> bytes:
    data = make_zip({"a.jpg": make_jpeg(), "b.png": make_png()})
    return data[: len(data) // 2]


def not_a_zip() -> bytes:
    return b"this is not a zip file\n" * 100


def empty_zip() -> bytes:
    return make_zip({})


def text_as_jpg_zip() -> bytes:
    return make_zip({"notes.jpg": b"hello, I am text\n" * 20, "good.jpg": make_jpeg()})


def cp437_named_zip() -> bytes:
    """One UTF-8 name without the UTF-8 flag, one genuine cp437 name (0x82 is 'é')."""
    data = make_zip({"café_ü.jpg": make_jpeg(), "cafX.jpg": make_jpeg((10, 10, 200))})
    buf = bytearray(data)
    (central0, local0), (central1, local1) = _entries(data)
    for offset in (central0 + 8, local0 + 6):
        (flags,) = struct.unpack_from("<H", buf, offset)
        struct.pack_into("<H", buf, offset, flags & ~0x800)
    buf[central1 + 46 + 3] = buf[local1 + 30 + 3] = 0x82
    return bytes(buf)


# ---- hostile images ---------------------------------------------------------------


def corrupt_jpeg() -> bytes:
    """A real JPEG header (SOI..SOS) followed by garbage and no end marker."""
    good = make_jpeg(size=(256, 256))
    start_of_scan = good.index(b"\xff\xda")
    return good[: start_of_scan + 14] + random.Random(7).randbytes(40)


def bomb_png(side: int = 20_000) -> bytes:
    """A valid 1-bit PNG of side x side pixels (400 Mpx at the default) in ~50 KB."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    packer = zlib.compressobj(9)
    row = bytes(1 + (side + 7) // 8)
    body = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )


def bomb_png_zip() -> bytes:
    return make_zip({"bomb.png": bomb_png(), "good.jpg": make_jpeg()})


# ---- hostile PDFs -----------------------------------------------------------------


def not_a_pdf() -> bytes:
    return b"%!PS-Adobe-3.0\nthis is PostScript, not PDF\n"


def encrypted_pdf(password: str = "hunter2") -> bytes:
    doc = pymupdf.open(stream=make_pdf(["secret page"]), filetype="pdf")
    aes_256 = pymupdf.PDF_ENCRYPT_AES_256  # type: ignore[attr-defined]
    data: bytes = doc.tobytes(encryption=aes_256, user_pw=password, owner_pw=password + "!")
    doc.close()
    return data


def too_many_pages_pdf(count: int = 501) -> bytes:
    doc = pymupdf.open()
    for _ in range(count):
        doc.new_page(width=200, height=200)
    data: bytes = doc.tobytes()
    doc.close()
    return data


def zero_page_pdf() -> bytes:
    return (
        b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
        b"2 0 obj << /Type /Pages /Kids [] /Count 0 >> endobj\n"
        b"trailer << /Root 1 0 R >>\n%%EOF\n"
    )


def corrupt_pdf() -> bytes:
    return b"%PDF-1.7\n" + random.Random(11).randbytes(2000)


# ---- the corpus -------------------------------------------------------------------

Outcome = Literal["invalid_upload", "limit_exceeded", "partial"]


@dataclass(frozen=True)
class HostileCase:
    """A hostile upload and what the service must answer (`partial`: only safe members kept)."""

    name: str
    filename: str
    build: Callable[[], bytes]
    outcome: Outcome
    limit: str | None = None
    kind: Literal["zip", "pdf", "image"] = "zip"


HOSTILE_ZIPS = [
    HostileCase("zip_slip", "slip.zip", zip_slip, "partial"),
    HostileCase("absolute_path", "absolute.zip", absolute_path_zip, "partial"),
    HostileCase("symlink", "symlink.zip", symlink_zip, "partial"),
    HostileCase("nested_zip", "nested.zip", nested_zip, "partial"),
    HostileCase("text_as_jpg", "text.zip", text_as_jpg_zip, "partial"),
    HostileCase("bomb_png_member", "bombpng.zip", bomb_png_zip, "partial"),
    HostileCase("lying_sizes", "liar.zip", lying_size_zip, "partial"),
    HostileCase("zip_bomb", "bomb.zip", zip_bomb, "limit_exceeded", "max_compression_ratio"),
    HostileCase(
        "declared_huge", "huge.zip", declared_huge_zip, "limit_exceeded", "max_uncompressed_bytes"
    ),
    HostileCase("many_members", "many.zip", many_members_zip, "limit_exceeded", "max_zip_members"),
    HostileCase("encrypted_zip", "encrypted.zip", encrypted_zip, "invalid_upload"),
    HostileCase("truncated_zip", "truncated.zip", truncated_zip, "invalid_upload"),
    HostileCase("not_a_zip", "fake.zip", not_a_zip, "invalid_upload"),
    HostileCase("empty_zip", "empty.zip", empty_zip, "invalid_upload"),
]
HOSTILE_IMAGES = [
    HostileCase("corrupt_jpeg", "corrupt.jpg", corrupt_jpeg, "invalid_upload", kind="image"),
    HostileCase(
        "bomb_png", "bomb.png", bomb_png, "limit_exceeded", "max_image_pixels", kind="image"
    ),
]
HOSTILE_PDFS = [
    HostileCase("not_a_pdf", "fake.pdf", not_a_pdf, "invalid_upload", kind="pdf"),
    HostileCase("encrypted_pdf", "locked.pdf", encrypted_pdf, "invalid_upload", kind="pdf"),
    HostileCase("zero_page_pdf", "empty.pdf", zero_page_pdf, "invalid_upload", kind="pdf"),
    HostileCase("corrupt_pdf", "corrupt.pdf", corrupt_pdf, "invalid_upload", kind="pdf"),
    HostileCase(
        "too_many_pages", "long.pdf", too_many_pages_pdf, "limit_exceeded", "max_pdf_pages", "pdf"
    ),
]
HOSTILE_CASES: dict[str, HostileCase] = {
    case.name: case for case in HOSTILE_ZIPS + HOSTILE_IMAGES + HOSTILE_PDFS
}
