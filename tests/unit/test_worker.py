"""The Embedder's core: results and failures per item, and the health verdict Serve acts on."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lumen.config import Settings
from lumen.worker import MAX_FORWARD_FAILURES, EmbedderCore
from tests.support.hostile import make_jpeg
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
