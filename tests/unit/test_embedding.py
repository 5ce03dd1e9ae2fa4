"""ClipModel against the tiny in-session-trained open_clip model (no downloads)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lumen.config import ModelSettings
from lumen.embedding import ClipModel
from tests.support.tiny_clip import (
    CLASSES,
    TinyClip,
    default_cache_dir,
    draw_shape,
    ensure_tiny_clip,
    load_state,
)

HELD_OUT_SEED = 424_242


@pytest.fixture(scope="module")
def tiny() -> TinyClip:
    return ensure_tiny_clip(default_cache_dir())


@pytest.fixture(scope="module")
def clip(tiny: TinyClip) -> ClipModel:
    return ClipModel.from_settings(tiny.model_settings(), device="cpu")


@pytest.fixture(scope="module")
def class_images() -> list[Image.Image]:
    return [draw_shape(c, s, size=256, seed=HELD_OUT_SEED) for c, s in CLASSES]


def test_checkpoint_and_config_file_load_as_unit_vectors_of_dim_64(
    clip: ClipModel, tiny: TinyClip, class_images: list[Image.Image]
) -> None:
    images = clip.encode_images(class_images[:3])
    texts = clip.encode_texts(["a red circle", "a blue square"])

    assert (clip.dim, clip.image_size, clip.device) == (64, 32, "cpu")
    assert clip.model_id == f"lumen-tiny:{tiny.checkpoint.name}"
    assert images.shape == (3, 64) and texts.shape == (2, 64)
    assert images.dtype == np.float32 and texts.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)


def test_text_query_ranks_the_matching_shape_first(
    clip: ClipModel, class_images: list[Image.Image]
) -> None:
    images = clip.encode_images(class_images)
    queries = clip.encode_texts([f"a {c} {s}" for c, s in CLASSES])

    best = (queries @ images.T).argmax(axis=1)

    assert CLASSES[best[CLASSES.index(("red", "circle"))]] == ("red", "circle")
    assert (best == np.arange(len(CLASSES))).sum() >= 11


def test_an_exact_copy_is_the_nearest_image(
    clip: ClipModel, class_images: list[Image.Image]
) -> None:
    original = class_images[4]
    copy = original.copy()
    vectors = clip.encode_images([*class_images, copy])

    similarity = vectors[:-1] @ vectors[-1]

    assert similarity[4] >= 0.99
    assert np.delete(similarity, 4).max() < similarity[4]


def test_batch_and_single_image_encodings_agree(
    clip: ClipModel, class_images: list[Image.Image]
) -> None:
    batch = clip.encode_image_tensors(torch.stack([clip.preprocess_image(i) for i in class_images]))
    single = clip.encode_images([class_images[7]])

    np.testing.assert_allclose(batch[7], single[0], atol=1e-5)


def test_non_rgb_images_are_converted_before_preprocessing(clip: ClipModel) -> None:
    grey = draw_shape("blue", "square", size=96, seed=1).convert("L")
    with_alpha = draw_shape("blue", "square", size=96, seed=1).convert("RGBA")

    assert clip.preprocess_image(grey).shape == (3, 32, 32)
    assert clip.encode_images([with_alpha]).shape == (1, 64)


def test_empty_inputs_give_empty_matrices(clip: ClipModel) -> None:
    assert clip.encode_images([]).shape == (0, 64)
    assert clip.encode_texts([]).shape == (0, 64)


def test_a_batch_without_a_batch_dimension_is_refused(clip: ClipModel) -> None:
    with pytest.raises(ValueError, match=r"\[n, 3, H, W\]"):
        clip.encode_image_tensors(torch.zeros(3, 32, 32))


@pytest.mark.parametrize("wrap", [True, False], ids=["state_dict-key", "raw-state-dict"])
def test_pt_checkpoints_load_the_same_weights(
    tiny: TinyClip, clip: ClipModel, tmp_path: Path, wrap: bool
) -> None:
    state = load_state(tiny.checkpoint)
    checkpoint = tmp_path / "tiny.pt"
    torch.save({"state_dict": state} if wrap else state, checkpoint)
    settings = tiny.model_settings().model_copy(update={"checkpoint": str(checkpoint)})

    reloaded = ClipModel.from_settings(settings, device="cpu")

    assert reloaded.model_id == "lumen-tiny:tiny.pt"
    np.testing.assert_allclose(
        reloaded.encode_texts(["a green triangle"]),
        clip.encode_texts(["a green triangle"]),
        atol=1e-6,
    )


def test_a_missing_checkpoint_raises_file_not_found(tiny: TinyClip, tmp_path: Path) -> None:
    settings = tiny.model_settings().model_copy(update={"checkpoint": str(tmp_path / "gone.pt")})

    with pytest.raises(FileNotFoundError, match="model checkpoint not found: .*gone.pt"):
        ClipModel.from_settings(settings, device="cpu")


def test_a_missing_config_file_raises_file_not_found(tmp_path: Path) -> None:
    settings = ModelSettings(name="lumen-tiny", config_file=str(tmp_path / "lumen-tiny.json"))

    with pytest.raises(FileNotFoundError, match="model config file not found"):
        ClipModel.from_settings(settings, device="cpu")


def test_a_config_file_named_unlike_the_model_is_refused(tiny: TinyClip, tmp_path: Path) -> None:
    renamed = tmp_path / "other-name.json"
    shutil.copy(tiny.config_file, renamed)
    settings = tiny.model_settings().model_copy(update={"config_file": str(renamed)})

    with pytest.raises(ValueError, match="name the file lumen-tiny.json"):
        ClipModel.from_settings(settings, device="cpu")
