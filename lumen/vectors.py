"""Embedding vectors as bytes and back, and L2 normalisation.

A vector is stored as its raw little-endian float32 bytes (exactly `4 * dim` bytes, no
header), so Redis holds about the raw size and decoding many is one `np.frombuffer`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# What a commit stores per item: (item, vector bytes, caption), or, for a photo OCR read,
# (item, vector bytes, caption, words, OCR note) (lumen.storage.vectors, lumen.ocr).
CommitRow = tuple[str, bytes, str] | tuple[str, bytes, str, str, str]

_WIRE_DTYPE = np.dtype("<f4")
_UNIT_NORM_ATOL = 1e-3


def encode_vector(vector: np.ndarray) -> bytes:
    """Return one vector's little-endian float32 bytes (`4 * dim` bytes)."""
    array = np.asarray(vector)
    if array.ndim != 1:
        raise ValueError(f"encode_vector expects one vector (1-D), got shape {array.shape}")
    return array.astype(_WIRE_DTYPE, copy=False).tobytes()


def encode_vectors(matrix: np.ndarray) -> list[bytes]:
    """Return each row of an `[n, dim]` matrix as its own blob, as `encode_vector` would."""
    array = np.asarray(matrix)
    if array.ndim != 2:
        raise ValueError(f"encode_vectors expects an [n, dim] matrix, got shape {array.shape}")
    wire = np.ascontiguousarray(array, dtype=_WIRE_DTYPE)
    return [row.tobytes() for row in wire]


def decode_vectors(blobs: Sequence[bytes], dim: int) -> np.ndarray:
    """Return blobs written by `encode_vector` as a writable `[n, dim]` float32 matrix."""
    row_bytes = 4 * dim
    joined = bytearray().join(blobs)  # bytearray: the result is writable without a copy
    if len(joined) != row_bytes * len(blobs):
        raise ValueError(_describe_bad_blob(blobs, dim))
    matrix = np.frombuffer(joined, dtype=_WIRE_DTYPE).reshape(len(blobs), dim)
    return matrix.astype(np.float32, copy=False)


def normalize(matrix: np.ndarray) -> np.ndarray:
    """Return a float32 copy whose rows have unit L2 norm; all-zero rows stay zero."""
    array = np.array(matrix, dtype=np.float32, copy=True, ndmin=2)
    norms = _row_norms(array)[:, None]
    np.divide(array, norms, out=array, where=norms > 0)
    return array


def is_normalized(matrix: np.ndarray, atol: float = _UNIT_NORM_ATOL) -> bool:
    """Whether every row of `matrix` already has unit L2 norm (all-zero rows count as fine)."""
    norms = _row_norms(np.asarray(matrix, dtype=np.float32).reshape(-1, np.shape(matrix)[-1]))
    return bool(np.all((np.abs(norms - 1.0) <= atol) | (norms == 0.0)))


def _row_norms(matrix: np.ndarray) -> np.ndarray:
    # einsum avoids the full-size temporary that np.linalg.norm allocates (2 GB at 1M x 512).
    return np.sqrt(np.einsum("ij,ij->i", matrix, matrix))


def _describe_bad_blob(blobs: Sequence[bytes], dim: int) -> str:
    for position, blob in enumerate(blobs):
        if len(blob) != 4 * dim:
            return (
                f"vector blob {position} has {len(blob)} bytes; a {dim}-dimensional float32"
                f" vector has {4 * dim}"
            )
    return f"vector blobs do not add up to {len(blobs)} vectors of dimension {dim}"
