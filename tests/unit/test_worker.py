"""The Embedder's core: results and failures per item, words read in photos, and the health
verdict Serve acts on."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import torch

from lumen.config import Settings
from lumen.ocr import Words
from lumen.worker import MAX_FORWARD_FAILURES, EmbedderCore
from tests.support.hostile import make_jpeg
from tests.support.photos import jpeg, plain_photo, sign
from tests.support.tiny_clip import default_cache_dir, ensure_tiny_clip


@pytest.fixture(scope="module")
def core(tmp_path_factory: pytest.TempPathFactory) -> EmbedderCore:
    tiny = ensure_tiny_clip(default_cache_dir())
    data = tmp_path_factory.mktemp("data")
    settings = Settings(data_dir=data, model=tiny.model_settings())
    return EmbedderCore(settings, "embedder-test", threads=1)


def test_an_item_on_disk_becomes_a_vector_of_the_models_size(core: EmbedderCore) -> None:
    folder = Path(core.settings.data_dir) / "uploads" / "alice"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "a.jpg").write_bytes(make_jpeg())
    tensor = core.decode("alice", "uploads/alice/a.jpg")
    vectors, captions = core.embed_checked([tensor])
    result = core.result("alice", "uploads/alice/a.jpg", vectors[0], captions[0])
    assert result.error is None and result.dim == core.dim and result.model_id == core.model_id
    assert len(result.vector or b"") == 4 * core.dim


def test_a_missing_file_is_a_permanent_failure(core: EmbedderCore) -> None:
    with pytest.raises(Exception) as exc:  # noqa: B017 - the kind is what failure() judges
        core.decode("alice", "uploads/alice/missing.jpg")
    failure = core.failure("alice", "uploads/alice/missing.jpg", exc.value)
    assert failure.permanent and failure.vector is None and failure.error


def test_a_model_that_keeps_failing_makes_the_replica_unhealthy_until_it_recovers(
    core: EmbedderCore, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = torch.zeros(3, core.model.image_size, core.model.image_size)
    assert core.health_problem() is None

    def broken(_: torch.Tensor) -> None:
        raise RuntimeError("CUDA error: an illegal memory access")

    with monkeypatch.context() as patch:
        patch.setattr(core.model, "encode_image_tensors", broken)
        for _ in range(MAX_FORWARD_FAILURES - 1):
            with pytest.raises(RuntimeError):
                core.embed_checked([good])
        assert core.health_problem() is None  # a blip is not a broken model
        with pytest.raises(RuntimeError):
            core.embed_checked([good])
        problem = core.health_problem()
        assert problem is not None and "illegal memory access" in problem
    core.embed_checked([good])
    assert core.health_problem() is None


def _put(core: EmbedderCore, name: str, data: bytes) -> str:
    folder = Path(core.settings.data_dir) / "uploads" / "alice"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    return f"uploads/alice/{name}"


def test_the_decode_for_the_model_also_says_whether_a_photo_may_show_words(
    core: EmbedderCore,
) -> None:
    sign_item = _put(core, "sign.jpg", jpeg(sign("PARKING 5 EUR")))
    plain_item = _put(core, "plain.jpg", jpeg(plain_photo(2, size=(800, 600))))
    tensor, look = core.decode_and_look("alice", sign_item)
    assert look and tensor.shape == core.decode("alice", sign_item).shape
    # the model sees exactly what the same photo gives as a query (searching by an uploaded
    # image finds it with similarity 1), also for a model smaller than the check's decode
    data = (Path(core.settings.data_dir) / sign_item).read_bytes()
    assert torch.equal(tensor, core.decode_bytes(data))
    photo = _put(core, "photo.jpg", make_jpeg())
    assert torch.equal(core.decode_and_look("alice", photo)[0], core.decode("alice", photo))
    assert core.decode_and_look("alice", plain_item)[1] is False


@pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract-ocr not installed")
def test_the_words_read_in_a_photo_travel_with_its_vector(core: EmbedderCore) -> None:
    item = _put(core, "exit.jpg", jpeg(sign("FIRE EXIT")))
    tensor, look = core.decode_and_look("alice", item)
    words = core.read_words("alice", item, time.monotonic())
    vectors, captions = core.embed_checked([tensor])
    result = core.result("alice", item, vectors[0], captions[0], words)
    assert look and (result.words, result.ocr_note) == ("FIRE EXIT", "")


def test_with_ocr_off_no_photo_is_looked_at_or_read(tmp_path: Path) -> None:
    tiny = ensure_tiny_clip(default_cache_dir())
    settings = Settings(data_dir=tmp_path, model=tiny.model_settings(), ocr={"photos": False})
    off = EmbedderCore(settings, "embedder-off", threads=1)
    item = _put(off, "sign.jpg", jpeg(sign("PARKING 5 EUR")))
    assert off.reader is None and off.decode_and_look("alice", item)[1] is False
    assert off.read_words("alice", item, time.monotonic()) == Words()
