"""Photos made in the test: signs, receipts and screenshots with words, and photos without."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# fonts-dejavu-core (Debian) ships these; without them Pillow's own scalable font is used
_FONTS = ("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",)
_MONO = ("/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf",)


def font(size: int, mono: bool = False) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    for path in _MONO if mono else _FONTS:
        if Path(path).is_file():
            return ImageFont.truetype(path, size)
    return ImageFont.load_default(size)


def sign(
    text: str,
    size: tuple[int, int] = (640, 480),
    font_px: int = 64,
    background: tuple[int, int, int] = (30, 90, 200),
) -> Image.Image:
    """A street sign: white words on a coloured plate."""
    img = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(img)
    draw.text((40, size[1] // 2 - font_px // 2), text, font=font(font_px), fill=(255, 255, 255))
    return img


def receipt(lines: int = 30, first: int = 0) -> Image.Image:
    """A till receipt: many short lines that end in prices (items numbered from `first`)."""
    img = Image.new("RGB", (600, 40 + 28 * lines), (245, 245, 240))
    draw = ImageDraw.Draw(img)
    face = font(18, mono=True)
    for row, i in enumerate(range(first, first + lines)):
        line = f"ITEM {i:02d} coffee beans {1.25 * i:6.2f}"
        draw.text((30, 20 + row * 28), line, font=face, fill=0)
    return img


def plain_photo(seed: int, size: tuple[int, int] = (1600, 1200)) -> Image.Image:
    """A photo-like picture without words: smooth colour fields, texture, sensor noise
    (as bench/ingest.py makes its corpus)."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(
        (w, h), Image.Resampling.BICUBIC
    )
    texture = Image.fromarray(rng.integers(0, 256, (h // 24, w // 24, 3), dtype=np.uint8))
    texture = texture.resize((w, h), Image.Resampling.BILINEAR)
    out = np.asarray(base, dtype=np.float32) * 0.7 + np.asarray(texture, dtype=np.float32) * 0.3
    out += rng.standard_normal((h, w, 1), dtype=np.float32) * 7
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
