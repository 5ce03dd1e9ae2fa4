"""Decoding Redis replies (bytes, or str with decode_responses) into text."""

from __future__ import annotations

from typing import Any


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def text_map(raw: Any) -> dict[str, str]:
    return {text(k): text(v) for k, v in dict(raw).items()}
