"""Zero-shot captions: the labels from `lumen/data/labels.txt` that best match each image vector."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Protocol

import numpy as np

DEFAULT_PROMPT = "a photo of a {label}"


class TextEncoder(Protocol):
    """Anything that embeds texts into L2-normalised rows, such as `ClipModel`."""

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray: ...


def load_labels() -> list[str]:
    """The packaged label vocabulary, one label per non-empty, non-comment line, deduplicated."""
    text = resources.files("lumen").joinpath("data/labels.txt").read_text(encoding="utf-8")
    return parse_labels(text)


def parse_labels(text: str) -> list[str]:
    seen: dict[str, None] = {}
    for line in text.splitlines():
        label = line.strip()
        if label and not label.startswith("#"):
            seen.setdefault(label, None)
    return list(seen)


class Captioner:
    """Scores image vectors against label embeddings computed once, in one matrix multiply."""

    def __init__(
        self,
        encoder: TextEncoder,
        labels: Sequence[str] | None = None,
        prompt: str = DEFAULT_PROMPT,
        cache_dir: Path | None = None,
    ) -> None:
        """`cache_dir`: where label vectors of these exact weights are kept (beside staged
        weights), so that only the first replica pays for encoding the vocabulary."""
        self._labels = list(labels) if labels is not None else load_labels()
        if not self._labels:
            raise ValueError("the caption vocabulary is empty")
        texts = [prompt.format(label=label) for label in self._labels]
        cache = None if cache_dir is None else cache_dir / f"captions-{_digest(texts)}.npy"
        vectors = None if cache is None else _load_vectors(cache, len(texts))
        if vectors is None:
            vectors = np.asarray(encoder.encode_texts(texts), dtype=np.float32)
            if cache is not None:
                _store_vectors(cache, vectors)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        self._label_vectors = vectors / np.maximum(norms, 1e-12)

    @property
    def labels(self) -> list[str]:
        return list(self._labels)

    def caption(self, image_vectors: np.ndarray, k: int) -> list[str]:
        """For each row, its best `k` labels, best first, joined by ", " (e.g. "red, circle")."""
        top = self.top_labels(image_vectors, k)
        return [", ".join(row) for row in top]

    def top_labels(self, image_vectors: np.ndarray, k: int) -> list[list[str]]:
        """For each row, its best `k` labels, best first."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        vectors = np.atleast_2d(np.asarray(image_vectors, dtype=np.float32))
        if vectors.shape[1] != self._label_vectors.shape[1]:
            raise ValueError(
                f"image vectors have dimension {vectors.shape[1]},"
                f" labels were embedded with dimension {self._label_vectors.shape[1]}"
            )
        if vectors.shape[0] == 0:
            return []
        k = min(k, len(self._labels))
        scores = vectors @ self._label_vectors.T
        best = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(scores, best, axis=1).argsort(axis=1)[:, ::-1]
        ranked = np.take_along_axis(best, order, axis=1)
        return [[self._labels[i] for i in row] for row in ranked]


def _digest(texts: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]


def _load_vectors(path: Path, rows: int) -> np.ndarray | None:
    """Cached label vectors, or None when absent or not what this vocabulary needs."""
    try:
        vectors = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    ok = vectors.ndim == 2 and vectors.shape[0] == rows and np.isfinite(vectors).all()
    return vectors.astype(np.float32, copy=False) if ok else None


def _store_vectors(path: Path, vectors: np.ndarray) -> None:
    """Best effort, atomic: a reader sees a whole file or none (the cache only saves time)."""
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with tmp.open("wb") as f:
            np.save(f, vectors, allow_pickle=False)
        tmp.replace(path)
