"""Staged weights, `lumen models pull` from a local source, and the model check deploy.py runs."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from lumen.captions import Captioner
from lumen.cli import run
from lumen.config import ModelSettings
from lumen.embedding import ClipModel, resolve_weights
from lumen.models import (
    MANIFEST,
    ChecksumMismatch,
    Source,
    StagedWeightsError,
    check_model,
    derived_dir,
    pull,
    read_staged,
    staged_folder,
)
from tests.support.tiny_clip import TinyClip, ensure_tiny_clip

TAG = "shapes-v1"


@pytest.fixture(scope="module")
def tiny() -> TinyClip:
    return ensure_tiny_clip()


def staged_settings(tiny: TinyClip, staged_dir: Path) -> ModelSettings:
    return ModelSettings(
        name=tiny.name,
        pretrained=TAG,
        staged_dir=str(staged_dir),
        config_file=str(tiny.config_file),
        fp16_on_gpu=False,
    )


def test_pull_from_a_file_url_stages_the_weights_with_their_sha256(
    tiny: TinyClip, tmp_path: Path
) -> None:
    expected = hashlib.sha256(tiny.checkpoint.read_bytes()).hexdigest()
    staged, fetched = pull(tiny.name, TAG, tmp_path, Source(tiny.checkpoint.as_uri(), expected))
    assert fetched
    assert staged.file == staged_folder(tmp_path, tiny.name, TAG) / tiny.checkpoint.name
    assert staged.file.read_bytes() == tiny.checkpoint.read_bytes()
    manifest = json.loads((staged.file.parent / MANIFEST).read_text())
    assert manifest["sha256"] == expected
    again, fetched_again = pull(tiny.name, TAG, tmp_path, Source(tiny.checkpoint.as_uri()))
    assert not fetched_again  # downloads once
    assert again.sha256 == expected


def test_pull_refuses_a_checksum_mismatch_and_stages_nothing(
    tiny: TinyClip, tmp_path: Path
) -> None:
    with pytest.raises(ChecksumMismatch, match="checksum mismatch"):
        pull(tiny.name, TAG, tmp_path, Source(str(tiny.checkpoint), "0" * 64))
    folder = staged_folder(tmp_path, tiny.name, TAG)
    assert not (folder / MANIFEST).exists()
    assert list(folder.iterdir()) == []  # no temporary file left either


def test_pull_refuses_an_unknown_model_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown model name 'ViT-Nope'"):
        pull("ViT-Nope", TAG, tmp_path, Source(str(tmp_path / "x")))


def test_names_that_would_leave_the_staged_folder_are_refused(tmp_path: Path) -> None:
    with pytest.raises(StagedWeightsError):
        staged_folder(tmp_path, "ViT-B-32", "../../etc")


def test_replica_loads_staged_weights(tiny: TinyClip, tmp_path: Path) -> None:
    pull(tiny.name, TAG, tmp_path, Source(str(tiny.checkpoint)))
    settings = staged_settings(tiny, tmp_path)
    assert check_model(settings) is None
    model = ClipModel.from_settings(settings, device="cpu")
    reference = ClipModel.from_settings(tiny.model_settings(), device="cpu")
    assert model.model_id == f"{tiny.name}:{TAG}"
    assert (model.encode_texts(["a red circle"]) == reference.encode_texts(["a red circle"])).all()


def test_missing_staged_weights_are_refused_with_the_pull_command(
    tiny: TinyClip, tmp_path: Path
) -> None:
    settings = staged_settings(tiny, tmp_path)
    problem = check_model(settings)
    assert problem is not None
    assert f"lumen models pull {tiny.name} {TAG} --to {tmp_path}" in problem
    with pytest.raises(StagedWeightsError, match="no staged weights"):
        resolve_weights(settings)


def test_corrupt_staged_weights_are_refused(tiny: TinyClip, tmp_path: Path) -> None:
    staged, _ = pull(tiny.name, TAG, tmp_path, Source(str(tiny.checkpoint)))
    data = bytearray(staged.file.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes
    staged.file.write_bytes(bytes(data))
    settings = staged_settings(tiny, tmp_path)
    assert "is corrupt" in (check_model(settings) or "")
    with pytest.raises(ChecksumMismatch, match="is corrupt"):
        ClipModel.from_settings(settings, device="cpu")
    staged.file.write_bytes(bytes(data[:100]))
    with pytest.raises(StagedWeightsError, match="100 bytes"):
        read_staged(tmp_path, tiny.name, TAG, verify=False)


def test_a_checkpoint_of_garbage_bytes_fails_the_check_naming_the_setting(
    tiny: TinyClip, tmp_path: Path
) -> None:
    garbage = tmp_path / "model.safetensors"
    garbage.write_bytes(b"\x00not a checkpoint" * 100)
    settings = tiny.model_settings().model_copy(update={"checkpoint": str(garbage)})
    problem = check_model(settings)
    assert problem is not None and "LUMEN_MODEL__CHECKPOINT" in problem
    missing = settings.model_copy(update={"checkpoint": str(tmp_path / "absent.pt")})
    assert "not found" in (check_model(missing) or "")


def test_the_check_refuses_unknown_names_and_tags_and_uncached_hub_weights(
    tmp_path: Path,
) -> None:
    assert "unknown model name" in (check_model(ModelSettings(name="ViT-Nope")) or "")
    unknown_tag = ModelSettings(name="ViT-B-32", pretrained="no-such-tag")
    assert "unknown pretrained tag" in (check_model(unknown_tag) or "")
    uncached = ModelSettings(name="ViT-B-32", cache_dir=str(tmp_path))
    problem = check_model(uncached) or ""
    assert "not in open_clip's cache" in problem and "LUMEN_MODEL__STAGED_DIR" in problem


def test_the_tiny_model_and_random_weights_pass_the_check(tiny: TinyClip) -> None:
    assert check_model(tiny.model_settings()) is None
    assert check_model(ModelSettings(name="ViT-B-32", pretrained=None)) is None


def test_cli_pulls_from_a_local_file_and_refuses_a_bad_checksum(
    tiny: TinyClip, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = [tiny.name, TAG, "--to", str(tmp_path), "--from", str(tiny.checkpoint)]
    assert run(["models", "pull", *bad, "--sha256", "f" * 64]) == 2
    assert "checksum mismatch" in capsys.readouterr().err
    assert run(["models", "pull", *bad]) == 0
    assert f"Staged {tiny.name} {TAG}" in capsys.readouterr().out


class CountingEncoder:
    """Embeds each text as a fixed random unit vector; counts the texts it was asked for."""

    def __init__(self, fail: bool = False) -> None:
        self.calls = 0
        self.fail = fail

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if self.fail:
            raise AssertionError("the cached label vectors should have been used")
        self.calls += len(texts)
        rng = np.random.default_rng(len(texts))
        rows = rng.normal(size=(len(texts), 8)).astype(np.float32)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_caption_vectors_are_computed_once_beside_staged_weights(
    tiny: TinyClip, tmp_path: Path
) -> None:
    pull(tiny.name, TAG, tmp_path, Source(str(tiny.checkpoint)))
    derived = derived_dir(staged_settings(tiny, tmp_path))
    assert derived is not None and derived.parent == staged_folder(tmp_path, tiny.name, TAG)
    labels = ["red", "green", "blue"]
    first = CountingEncoder()
    computed = Captioner(first, labels=labels, cache_dir=derived)
    assert first.calls == 3
    cached = Captioner(CountingEncoder(fail=True), labels=labels, cache_dir=derived)
    vectors = np.eye(8, dtype=np.float32)[:2]
    assert computed.caption(vectors, 1) == cached.caption(vectors, 1)
    for cache in derived.glob("captions-*.npy"):
        cache.write_bytes(b"garbage")  # a broken cache is recomputed, never trusted
    again = CountingEncoder()
    Captioner(again, labels=labels, cache_dir=derived)
    assert again.calls == 3
    other = CountingEncoder()
    Captioner(other, labels=[*labels, "yellow"], cache_dir=derived)  # another vocabulary
    assert other.calls == 4


def test_nothing_is_derived_without_staged_weights(tiny: TinyClip) -> None:
    assert derived_dir(tiny.model_settings()) is None
