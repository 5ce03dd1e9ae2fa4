"""The Redis layout's pure parts: cluster URLs, shards, key names, vector blocks."""

from __future__ import annotations

import zlib

import pytest

from lumen.keys import VECTOR_BLOCK_IDS, Keys, shard_of
from lumen.storage import cluster_url
from lumen.storage.queue import _glob_escape
from lumen.storage.vectors import blocks_of, pack_rows, slot_offset


@pytest.mark.parametrize(
    ("url", "flag", "expected"),
    [
        ("redis://h:6379/0", False, ("redis://h:6379/0", False)),
        ("redis://h:6379/0", True, ("redis://h:6379/0", True)),
        ("redis+cluster://h:7000/0", False, ("redis://h:7000/0", True)),
        ("rediss+cluster://:tok@h:6379", False, ("rediss://:tok@h:6379", True)),
        ("REDIS+CLUSTER://h:1", False, ("redis://h:1", True)),
        ("rediss://:tok@h:6379/0", False, ("rediss://:tok@h:6379/0", False)),
    ],
)
def test_a_cluster_is_named_by_the_url_scheme_or_the_setting(
    url: str, flag: bool, expected: tuple[str, bool]
) -> None:
    assert cluster_url(url, flag) == expected


def test_shard_of_is_crc32_and_matches_the_actors_mapping() -> None:
    from actors.naming import shard_for

    for user in ("alice", "bob", "üñï", "x" * 64):
        assert shard_of(user, 3) == zlib.crc32(user.encode()) % 3 == shard_for(user, 3)
        assert shard_of(user, 1) == 0 and shard_of(user, 0) == 0


def test_every_per_user_key_shares_the_users_hash_tag_and_cross_user_keys_are_per_shard() -> None:
    k = Keys("ns")
    per_user = [*k.user_keys("al"), *k.vblocks("al", 10_000), k.vseq("al"), k.reply("al", "t")]
    assert all("{al}" in key for key in per_user)
    assert k.deadline("al") in k.user_keys("al")  # reset clears the user's deadlines
    assert k.active(2) == "ns:active:2" and k.deadlines(2) == "ns:deadlines:2"
    assert "{" not in k.active(0) + k.deadlines(0)


def test_vblocks_names_every_block_the_ids_so_far_can_use() -> None:
    k = Keys("ns")
    assert k.vblocks("u", 0) == [k.vblock("u", 0)]
    last = 2 * VECTOR_BLOCK_IDS + 5
    assert k.vblocks("u", last) == [k.vblock("u", b) for b in range(3)]
    assert k.vblock("u", 7) == "ns:vblk:{u}:7"


def test_block_numbers_and_offsets() -> None:
    assert blocks_of([1, 4, 3, 8], per=4) == [0, 1, 2]
    assert slot_offset(5, dim=2, per=4) == 8  # slot 1 of block 1, 8 bytes a vector
    assert slot_offset(VECTOR_BLOCK_IDS, dim=512) == 0


def test_pack_rows_makes_one_write_per_run_of_adjacent_slots_in_a_block() -> None:
    blobs = [bytes([i]) * 8 for i in range(6)]
    writes = pack_rows([3, 4, 5, 6, 7, 8], blobs, dim=2, per=4)
    assert writes == [
        (0, 24, blobs[0]),
        (1, 0, b"".join(blobs[1:5])),
        (2, 0, blobs[5]),
    ]
    assert pack_rows([1, 3], blobs[:2], dim=2, per=4) == [(0, 8, blobs[0]), (0, 24, blobs[1])]


def test_pack_rows_refuses_a_vector_of_the_wrong_size() -> None:
    with pytest.raises(ValueError, match="not 8"):
        pack_rows([1], [b"short"], dim=2)


def test_a_full_block_fits_the_allocator_class_of_4096_rows() -> None:
    # 4095 rows plus Redis's 9-byte string header and its terminator stay within 4096 rows
    for dim in (384, 512, 768, 1024):
        assert VECTOR_BLOCK_IDS * dim * 4 + 10 <= 4096 * dim * 4


def test_scan_patterns_match_names_literally() -> None:
    assert _glob_escape("ns*?[x]\\") == "ns\\*\\?\\[x\\]\\\\"
    assert _glob_escape("lumen:queue:") == "lumen:queue:"
