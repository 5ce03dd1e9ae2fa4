"""A benchmark-only stand-in for the model: no decode, no forward, deterministic vectors.

`bench/control_plane.py` measures what the service costs around the model (ingress, Redis,
dispatcher, Serve, index shards) with it. It can never serve real users by accident: the
setting `model.benchmark_null` is refused unless the process environment also carries
`LUMEN_BENCHMARK_NULL_MODEL=i-am-benchmarking`, and the model itself checks again in every
replica that loads it.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from lumen.vectors import normalize

BENCHMARK_ENV = "LUMEN_BENCHMARK_NULL_MODEL"
BENCHMARK_ENV_VALUE = "i-am-benchmarking"


def require_benchmark_env() -> None:
    if os.environ.get(BENCHMARK_ENV) != BENCHMARK_ENV_VALUE:
        raise ValueError(
            "model.benchmark_null is for benchmarks only: it returns made-up vectors. Set "
            f"{BENCHMARK_ENV}={BENCHMARK_ENV_VALUE} in the environment if that is what you want"
        )


_TABLE_ROWS = 4096


def _table(dim: int) -> np.ndarray:
    """Unit vectors the seeds index into (building a generator per item costs more than
    everything else the null model does)."""
    return normalize(np.random.default_rng(0).standard_normal((_TABLE_ROWS, dim)))


class NullClip:
    """The parts of `ClipModel` the Embedder uses, answered without any model."""

    name = "benchmark-null"
    image_size = 4
    device = "cpu"

    def __init__(self, dim: int = 512) -> None:
        require_benchmark_env()
        self.dim = dim
        self.table = _table(dim).astype(np.float32)

    @property
    def model_id(self) -> str:
        return f"{self.name}/{self.dim}"

    def tensor_for(self, item: str) -> torch.Tensor:
        """What `decode` gives for an item without reading its file: its name as a seed."""
        return torch.full((1,), float(zlib.crc32(item.encode())), dtype=torch.float64)

    def preprocess_image(self, img: Image.Image) -> torch.Tensor:
        return self.tensor_for(str(img.size))

    def encode_image_tensors(self, batch: torch.Tensor) -> np.ndarray:
        seeds = batch.reshape(len(batch), -1)[:, 0].to(torch.int64).numpy()
        return self.table[seeds % _TABLE_ROWS]

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        seeds = np.array([zlib.crc32(t.encode()) for t in texts], dtype=np.int64)
        return self.table[seeds % _TABLE_ROWS]
