"""The benchmark-only model cannot be switched on by accident."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from lumen.config import ModelSettings, Settings
from lumen.nullmodel import BENCHMARK_ENV, BENCHMARK_ENV_VALUE, NullClip


def test_the_setting_alone_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BENCHMARK_ENV, raising=False)
    with pytest.raises(ValidationError, match=BENCHMARK_ENV):
        Settings(model={"benchmark_null": True})
    monkeypatch.setenv("LUMEN_MODEL__BENCHMARK_NULL", "true")
    with pytest.raises(ValidationError, match="benchmarks only"):
        Settings()


def test_a_wrong_value_of_the_guard_is_refused_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BENCHMARK_ENV, "1")
    with pytest.raises(ValidationError):
        ModelSettings(benchmark_null=True)


def test_the_model_checks_again_where_it_is_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BENCHMARK_ENV, raising=False)
    with pytest.raises(ValueError, match=BENCHMARK_ENV):
        NullClip()


def test_with_the_guard_it_gives_deterministic_unit_vectors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(BENCHMARK_ENV, BENCHMARK_ENV_VALUE)
    assert ModelSettings(benchmark_null=True).benchmark_null
    model = NullClip(dim=16)
    batch = np.stack([model.tensor_for("a"), model.tensor_for("b"), model.tensor_for("a")])
    vecs = model.encode_image_tensors(torch.from_numpy(batch))
    assert vecs.shape == (3, 16) and np.allclose(np.linalg.norm(vecs, axis=1), 1.0)
    assert np.allclose(vecs[0], vecs[2]) and not np.allclose(vecs[0], vecs[1])
