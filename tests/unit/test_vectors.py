"""Vector blobs round-trip exactly and normalisation is safe."""

from __future__ import annotations

import numpy as np
import pytest

from lumen.vectors import decode_vectors, encode_vector, encode_vectors, is_normalized, normalize


def test_an_encoded_vector_is_exactly_four_bytes_per_dimension() -> None:
    vector = np.random.default_rng(0).standard_normal(512)

    assert len(encode_vector(vector)) == 4 * 512


def test_encoding_is_little_endian_float32() -> None:
    assert encode_vector(np.array([1.0, -2.0])) == bytes.fromhex("0000803f000000c0")


def test_decoding_round_trips_a_batch_bit_for_bit() -> None:
    matrix = np.random.default_rng(1).standard_normal((50, 16)).astype(np.float32)

    decoded = decode_vectors([encode_vector(row) for row in matrix], 16)

    assert decoded.dtype == np.float32
    assert decoded.shape == (50, 16)
    np.testing.assert_array_equal(decoded, matrix)


def test_encode_vectors_matches_encoding_each_row() -> None:
    matrix = np.random.default_rng(2).standard_normal((3, 8))

    assert encode_vectors(matrix) == [encode_vector(row) for row in matrix]


def test_decoded_vectors_can_be_modified_in_place() -> None:
    decoded = decode_vectors([encode_vector(np.ones(4))], 4)

    decoded *= 2

    np.testing.assert_array_equal(decoded, np.full((1, 4), 2.0, np.float32))


def test_decoding_no_blobs_gives_an_empty_matrix_of_the_right_width() -> None:
    assert decode_vectors([], 7).shape == (0, 7)


def test_decoding_a_blob_of_the_wrong_size_names_the_blob() -> None:
    blobs = [encode_vector(np.ones(4)), encode_vector(np.ones(3))]

    with pytest.raises(ValueError, match="blob 1 has 12 bytes.*16"):
        decode_vectors(blobs, 4)


def test_encoding_a_matrix_as_one_vector_is_refused() -> None:
    with pytest.raises(ValueError, match="1-D"):
        encode_vector(np.ones((2, 4)))


def test_normalize_gives_unit_rows_and_leaves_zero_rows_zero() -> None:
    matrix = np.array([[3.0, 4.0], [0.0, 0.0], [0.0, -2.0]])

    result = normalize(matrix)

    np.testing.assert_allclose(result, [[0.6, 0.8], [0.0, 0.0], [0.0, -1.0]], rtol=1e-6)
    assert result.dtype == np.float32
    assert not np.isnan(result).any()


def test_normalize_leaves_its_input_untouched() -> None:
    matrix = np.array([[3.0, 4.0]], dtype=np.float32)

    normalize(matrix)

    np.testing.assert_array_equal(matrix, [[3.0, 4.0]])


def test_is_normalized_tells_unit_rows_from_others() -> None:
    unit = normalize(np.random.default_rng(3).standard_normal((10, 32)))

    assert is_normalized(unit)
    assert is_normalized(np.zeros((2, 32)))
    assert not is_normalized(unit * 1.1)
