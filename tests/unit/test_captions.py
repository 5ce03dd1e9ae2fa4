"""Captioner: label choice through a fake TextEncoder, the packaged vocabulary, the tiny model.

The tiny model only ever saw colour and shape words, so over the full packaged vocabulary
its (random) embeddings of unseen words win; its test uses the colour and shape labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from lumen.captions import Captioner, load_labels, parse_labels
from lumen.embedding import ClipModel
from tests.support.tiny_clip import (
    CLASSES,
    COLORS,
    SHAPES,
    default_cache_dir,
    draw_shape,
    ensure_tiny_clip,
)

LABELS = ["red", "green", "circle", "square", "dog"]


class WordEncoder:
    """A TextEncoder whose vector for a prompt is the one-hot of the label it ends with."""

    def __init__(self, labels: Sequence[str]) -> None:
        self.labels = list(labels)
        self.calls: list[list[str]] = []

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        for row, text in enumerate(texts):
            out[row, self._label_of(text)] = 1.0
        return out

    def _label_of(self, text: str) -> int:
        return next(i for i, label in enumerate(self.labels) if text.endswith(" " + label))


def image_vector(**weights: float) -> np.ndarray:
    vector = np.array([weights.get(label, 0.0) for label in LABELS], dtype=np.float32)
    return vector / np.linalg.norm(vector)


def test_caption_lists_the_best_labels_best_first() -> None:
    captioner = Captioner(WordEncoder(LABELS), labels=LABELS)
    red_circle = image_vector(red=0.8, circle=0.5, dog=0.1)

    assert captioner.caption(red_circle[None, :], k=2) == ["red, circle"]
    assert captioner.caption(red_circle[None, :], k=3) == ["red, circle, dog"]


def test_each_row_of_a_batch_gets_its_own_caption() -> None:
    captioner = Captioner(WordEncoder(LABELS), labels=LABELS)
    batch = np.stack([image_vector(square=1.0, green=0.3), image_vector(dog=1.0, red=0.2)])

    assert captioner.caption(batch, k=2) == ["square, green", "dog, red"]


def test_labels_are_embedded_once_with_the_photo_prompt() -> None:
    encoder = WordEncoder(LABELS)
    captioner = Captioner(encoder, labels=LABELS)
    for _ in range(3):
        captioner.caption(image_vector(red=1.0)[None, :], k=1)

    assert encoder.calls == [[f"a photo of a {label}" for label in LABELS]]


def test_k_beyond_the_vocabulary_returns_every_label() -> None:
    captioner = Captioner(WordEncoder(LABELS), labels=LABELS)

    (caption,) = captioner.caption(image_vector(dog=1.0)[None, :], k=50)

    assert caption.split(", ")[0] == "dog"
    assert sorted(caption.split(", ")) == sorted(LABELS)


def test_bad_k_and_wrong_dimension_are_refused() -> None:
    captioner = Captioner(WordEncoder(LABELS), labels=LABELS)

    with pytest.raises(ValueError, match="k must be at least 1"):
        captioner.caption(image_vector(red=1.0)[None, :], k=0)
    with pytest.raises(ValueError, match="dimension 3"):
        captioner.caption(np.ones((1, 3), dtype=np.float32), k=1)


def test_an_empty_batch_gets_no_captions() -> None:
    captioner = Captioner(WordEncoder(LABELS), labels=LABELS)

    assert captioner.caption(np.empty((0, len(LABELS)), dtype=np.float32), k=3) == []


def test_packaged_vocabulary_covers_colours_shapes_and_documents() -> None:
    labels = load_labels()

    assert len(labels) >= 200
    assert len(set(labels)) == len(labels)
    for needed in ("red", "green", "blue", "yellow", "circle", "square", "triangle"):
        assert needed in labels
    for needed in ("text document", "chart", "screenshot"):
        assert needed in labels
    assert not any(label.startswith("#") for label in labels)


def test_parse_labels_skips_comments_blanks_and_repeats() -> None:
    assert parse_labels("# colours\nred\n\n  blue \nred\n") == ["red", "blue"]


def test_tiny_model_captions_a_shape_with_its_colour_and_shape() -> None:
    clip = ClipModel.from_settings(ensure_tiny_clip(default_cache_dir()).model_settings(), "cpu")
    labels = [label for label in load_labels() if label in COLORS or label in SHAPES]
    captioner = Captioner(clip, labels=labels)
    images = [draw_shape(c, s, size=256, seed=31_337) for c, s in CLASSES]

    captions = captioner.top_labels(clip.encode_images(images), k=2)

    right = [set(words) == {c, s} for words, (c, s) in zip(captions, CLASSES, strict=True)]
    assert set(captions[CLASSES.index(("red", "circle"))]) == {"red", "circle"}
    assert sum(right) >= 11
