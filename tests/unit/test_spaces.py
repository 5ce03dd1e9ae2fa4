"""Spaces: the indexes a shard keeps for its users take their shape from the index settings."""

from __future__ import annotations

import numpy as np

from lumen.config import IndexSettings
from lumen.index import IndexKind
from lumen.spaces import new_index
from lumen.vectors import normalize

DIM = 32


def vectors(n: int) -> np.ndarray:
    return normalize(np.random.default_rng(0).standard_normal((n, DIM)))


def test_a_new_index_takes_its_threshold_and_nprobe_from_the_settings() -> None:
    settings = IndexSettings(approximate_threshold=100, ivf_nprobe=3)

    built = new_index(DIM, settings, np.arange(200), vectors(200))
    empty = new_index(DIM, settings)

    assert (built.kind, built.nprobe, len(built)) == (IndexKind.IVF, 3, 200)
    assert (empty.kind, empty.nprobe, len(empty)) == (IndexKind.FLAT, 3, 0)
    empty.upsert(np.arange(200), vectors(200))
    assert empty.kind is IndexKind.IVF  # it crossed the configured threshold
