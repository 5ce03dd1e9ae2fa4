"""ZIP extraction: the happy path, naming rules and the hostile corpus."""

from __future__ import annotations

import contextlib
import hashlib
import io
import struct
import zipfile
from pathlib import Path

import pytest

from lumen.config import LimitSettings
from lumen.errors import InvalidUpload, LimitExceeded
from lumen.ingest import archive as archive_module
from lumen.ingest.archive import (
    ExtractResult,
    ZipExtraction,
    claim_unique_path,
    extract_images,
    safe_stem,
)
from lumen.ingest.images import ImageFormat
from lumen.ingest.zipdir import survey_zip
from lumen.quota import Allowance
from tests.support import hostile
from tests.support.hostile import (
    HOSTILE_ZIPS,
    HostileCase,
    make_heic,
    make_jpeg,
    make_png,
    make_zip,
)

LIMITS = LimitSettings()


@pytest.fixture
def user_dir(tmp_path: Path) -> Path:
    return tmp_path / "users" / "alice"


def _extract(
    tmp_path: Path, data: bytes, dest: Path, limits: LimitSettings = LIMITS
) -> ExtractResult:
    upload = tmp_path / "upload.zip"
    upload.write_bytes(data)
    return extract_images(upload, dest, limits)


def _all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink())


def _names(result: ExtractResult) -> list[str]:
    return sorted(image.path.name for image in result.images)


def _reasons(result: ExtractResult) -> dict[str, str]:
    return {skip.name: skip.reason for skip in result.skipped}


def test_good_zip_yields_every_image_with_format_and_hash(tmp_path: Path, user_dir: Path) -> None:
    members = {"a.jpg": make_jpeg(), "b.png": make_png(), "c.heic": make_heic()}
    result = _extract(tmp_path, make_zip(members), user_dir)
    assert _names(result) == ["a.jpg", "b.png", "c.heic"]
    assert result.skipped == []
    for image in result.images:
        assert image.path.parent == user_dir
        assert image.path.read_bytes() == members[image.original_name]
        assert image.sha256 == hashlib.sha256(members[image.original_name]).hexdigest()
    formats = {image.original_name: image.format for image in result.images}
    assert formats == {
        "a.jpg": ImageFormat.JPEG,
        "b.png": ImageFormat.PNG,
        "c.heic": ImageFormat.HEIC,
    }


def test_zip_slip_entry_never_writes_outside_user_folder(tmp_path: Path, user_dir: Path) -> None:
    result = _extract(tmp_path, hostile.zip_slip(), user_dir)
    assert _names(result) == ["good.jpg"]
    assert "unsafe path" in _reasons(result)["../../evil.jpg"]
    assert _all_files(tmp_path) == [tmp_path / "upload.zip", user_dir / "good.jpg"]
    assert not list(tmp_path.rglob("evil*"))


def test_absolute_and_drive_letter_paths_are_skipped(tmp_path: Path, user_dir: Path) -> None:
    result = _extract(tmp_path, hostile.absolute_path_zip(), user_dir)
    assert _names(result) == ["good.jpg"]
    assert set(_reasons(result)) == {"/tmp/evil.jpg", "C:/evil2.jpg"}
    assert not list(tmp_path.rglob("evil*"))


def test_symlink_entry_is_skipped_and_never_created(tmp_path: Path, user_dir: Path) -> None:
    result = _extract(tmp_path, hostile.symlink_zip(), user_dir)
    assert _names(result) == ["good.jpg"]
    assert _reasons(result) == {"link.jpg": "symbolic links are not extracted"}
    assert not any(p.is_symlink() for p in user_dir.iterdir())


def test_zip_bomb_is_refused_by_compression_ratio(tmp_path: Path, user_dir: Path) -> None:
    with pytest.raises(LimitExceeded) as caught:
        _extract(tmp_path, hostile.zip_bomb(), user_dir)
    assert caught.value.limit == "max_compression_ratio"
    assert _all_files(user_dir) == []


def test_member_with_lying_sizes_is_skipped_and_never_inflated(
    tmp_path: Path, user_dir: Path
) -> None:
    result = _extract(tmp_path, hostile.lying_size_zip(), user_dir)
    assert _names(result) == ["good.jpg"]
    assert "damaged" in _reasons(result)["liar.jpg"]
    assert all(p.stat().st_size < 100_000 for p in _all_files(user_dir))


def test_declared_total_over_limit_refuses_the_archive(tmp_path: Path, user_dir: Path) -> None:
    with pytest.raises(LimitExceeded) as caught:
        _extract(tmp_path, hostile.declared_huge_zip(), user_dir)
    assert caught.value.limit == "max_uncompressed_bytes"


def test_real_total_over_limit_refuses_the_archive(tmp_path: Path, user_dir: Path) -> None:
    data = make_zip({"a.jpg": make_jpeg(size=(300, 300)), "b.jpg": make_jpeg(size=(300, 300))})
    limits = LimitSettings(max_uncompressed_bytes=len(make_jpeg(size=(300, 300))) + 10)
    with pytest.raises(LimitExceeded) as caught:
        _extract(tmp_path, data, user_dir, limits)
    assert caught.value.limit == "max_uncompressed_bytes"


def test_too_many_members_refuses_the_archive(tmp_path: Path, user_dir: Path) -> None:
    data = make_zip({f"{i}.jpg": make_jpeg() for i in range(11)})
    with pytest.raises(LimitExceeded) as caught:
        _extract(tmp_path, data, user_dir, LimitSettings(max_zip_members=10))
    assert caught.value.limit == "max_zip_members"
    assert _all_files(user_dir) == []


def test_nested_archive_is_skipped_with_reason(tmp_path: Path, user_dir: Path) -> None:
    result = _extract(tmp_path, hostile.nested_zip(), user_dir)
    assert _names(result) == ["good.jpg"]
    assert _reasons(result) == {"inner.zip": "nested archives are not extracted"}


def test_encrypted_zip_is_refused(tmp_path: Path, user_dir: Path) -> None:
    with pytest.raises(InvalidUpload, match="encrypted archives are not supported"):
        _extract(tmp_path, hostile.encrypted_zip(), user_dir)


@pytest.mark.parametrize("build", [hostile.truncated_zip, hostile.not_a_zip, hostile.empty_zip])
def test_unreadable_or_empty_archive_is_an_invalid_upload(
    tmp_path: Path, user_dir: Path, build: object
) -> None:
    with pytest.raises(InvalidUpload):
        _extract(tmp_path, build(), user_dir)  # type: ignore[operator]


def test_text_named_jpg_is_skipped_as_not_an_image(tmp_path: Path, user_dir: Path) -> None:
    result = _extract(tmp_path, hostile.text_as_jpg_zip(), user_dir)
    assert _names(result) == ["good.jpg"]
    assert "not a JPEG, PNG or HEIC image" in _reasons(result)["notes.jpg"]


def test_oversized_image_is_skipped_and_the_rest_extracted(tmp_path: Path, user_dir: Path) -> None:
    result = _extract(tmp_path, hostile.bomb_png_zip(), user_dir)
    assert _names(result) == ["good.jpg"]
    assert "pixels" in _reasons(result)["bomb.png"]


def test_image_over_max_image_bytes_is_skipped(tmp_path: Path, user_dir: Path) -> None:
    big = make_jpeg(size=(400, 400))
    data = make_zip({"big.jpg": big, "small.png": make_png(size=(8, 8))})
    result = _extract(tmp_path, data, user_dir, LimitSettings(max_image_bytes=len(big) - 1))
    assert _names(result) == ["small.png"]
    assert "limit for one image" in _reasons(result)["big.jpg"]


def test_hidden_files_and_macos_metadata_are_silently_skipped(
    tmp_path: Path, user_dir: Path
) -> None:
    jpeg = make_jpeg()
    members = {
        ".DS_Store": b"junk",
        "__MACOSX/._a.jpg": jpeg,
        ".hidden/x.jpg": jpeg,
        "trip/.thumb.jpg": jpeg,
        "trip/": b"",
        "trip/a.jpg": jpeg,
    }
    result = _extract(tmp_path, make_zip(members), user_dir)
    assert _names(result) == ["a.jpg"]
    assert result.skipped == []


def test_upper_case_extensions_and_unicode_names_survive(tmp_path: Path, user_dir: Path) -> None:
    members = {"Фото/ÉTÉ 2024.JPG": make_jpeg(), "日本.PNG": make_png(), "IMG_1.HEIC": make_heic()}
    result = _extract(tmp_path, make_zip(members), user_dir)
    assert _names(result) == sorted(["ÉTÉ 2024.jpg", "日本.png", "IMG_1.heic"])
    assert {image.original_name for image in result.images} == set(members)


def test_names_without_the_utf8_flag_are_decoded(tmp_path: Path, user_dir: Path) -> None:
    result = _extract(tmp_path, hostile.cp437_named_zip(), user_dir)
    assert _names(result) == sorted(["café_ü.jpg", "café.jpg"])


def test_subfolders_are_flattened_and_same_names_kept_apart(tmp_path: Path, user_dir: Path) -> None:
    members = {"2023/beach/IMG_1.jpg": make_jpeg((1, 2, 3)), "2024/IMG_1.jpg": make_jpeg()}
    result = _extract(tmp_path, make_zip(members), user_dir)
    assert _names(result) == ["IMG_1.jpg", "IMG_1_1.jpg"]
    assert [p.parent for p in _all_files(user_dir)] == [user_dir, user_dir]


def test_extracting_the_same_zip_twice_never_overwrites(tmp_path: Path, user_dir: Path) -> None:
    data = make_zip({"a.jpg": make_jpeg(), "b.png": make_png()})
    first = _extract(tmp_path, data, user_dir)
    before = {p: p.read_bytes() for p in _all_files(user_dir)}
    second = _extract(tmp_path, data, user_dir)
    assert _names(second) == ["a_1.jpg", "b_1.png"]
    assert {p: p.read_bytes() for p in before} == before
    assert len(_all_files(user_dir)) == 4
    assert [i.sha256 for i in first.images] == [i.sha256 for i in second.images]


def test_wrong_or_missing_extension_is_taken_from_the_bytes(tmp_path: Path, user_dir: Path) -> None:
    members = {"photo.png": make_jpeg(), "scan": make_png(), "x.JPEG": make_jpeg()}
    result = _extract(tmp_path, make_zip(members), user_dir)
    assert _names(result) == ["photo.jpg", "scan.png", "x.jpeg"]


def test_unsafe_characters_are_replaced_and_long_names_capped(
    tmp_path: Path, user_dir: Path
) -> None:
    long_name = "é" * 200 + ".jpg"
    members = {'we<ird>:na|me?*".jpg': make_jpeg(), long_name: make_jpeg()}
    result = _extract(tmp_path, make_zip(members), user_dir)
    names = _names(result)
    assert "we_ird__na_me___.jpg" in names
    assert all(len(n.encode("utf-8")) <= 150 and n.endswith(".jpg") for n in names)


def test_no_partial_files_are_left_behind(tmp_path: Path, user_dir: Path) -> None:
    for case in HOSTILE_ZIPS:
        with contextlib.suppress(InvalidUpload, LimitExceeded):
            _extract(tmp_path, case.build(), user_dir)
    assert not [p for p in user_dir.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("case", HOSTILE_ZIPS, ids=lambda case: case.name)
def test_hostile_zip_corpus_gets_its_documented_outcome(
    tmp_path: Path, user_dir: Path, case: HostileCase
) -> None:
    if case.outcome == "partial":
        result = _extract(tmp_path, case.build(), user_dir)
        assert _names(result) == ["good.jpg"]
        assert result.skipped
        return
    expected = LimitExceeded if case.outcome == "limit_exceeded" else InvalidUpload
    with pytest.raises(expected) as caught:
        _extract(tmp_path, case.build(), user_dir)
    if case.limit:
        assert caught.value.limit == case.limit  # type: ignore[attr-defined]
    assert not any(p.is_file() for p in user_dir.glob("*"))


def test_safe_stem_never_makes_hidden_or_empty_names() -> None:
    assert safe_stem("..") == "image"
    assert safe_stem(".bashrc") == "bashrc"
    assert safe_stem("a/b\\c") == "a_b_c"


def test_claimed_paths_are_unique(tmp_path: Path) -> None:
    paths = {claim_unique_path(tmp_path, "x", ".jpg") for _ in range(3)}
    assert sorted(p.name for p in paths) == ["x.jpg", "x_1.jpg", "x_2.jpg"]


def test_zipfile_itself_would_have_followed_the_slip() -> None:
    """Guards the corpus: the slip member really is named with `..`."""
    import io

    with zipfile.ZipFile(io.BytesIO(hostile.zip_slip())) as archive:
        assert "../../evil.jpg" in archive.namelist()


# ---- the member count comes from the end records, before zipfile loads the directory --

_EOCD = struct.Struct("<4s4H2LH")


def _eocd_at(data: bytes) -> int:
    return data.rindex(b"PK\x05\x06")


def _declare_members(data: bytes, count: int) -> bytes:
    """Make the end record claim `count` members (the directory itself is unchanged)."""
    buf = bytearray(data)
    struct.pack_into("<HH", buf, _eocd_at(data) + 8, count, count)
    return bytes(buf)


def _as_zip64(data: bytes, declared: int | None = None) -> bytes:
    """Rewrite the end records the ZIP64 way (the 32-bit fields all 0xFFFF.. sentinels)."""
    at = _eocd_at(data)
    _, _, _, _, total, size, offset, _ = _EOCD.unpack_from(data, at)
    count = total if declared is None else declared
    record = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, size, offset)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, at, 1)
    eocd = _EOCD.pack(b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return data[:at] + record + locator + eocd


def test_member_count_is_read_from_the_end_record_before_the_directory(
    tmp_path: Path, user_dir: Path
) -> None:
    """The end record claims a million members and the directory is cut off: zipfile would
    report a damaged archive; the limit is named because nothing else was read."""
    data = _declare_members(make_zip({"a.jpg": make_jpeg()}), 0xFFFF)
    with pytest.raises(LimitExceeded) as caught:
        _extract(tmp_path, data, user_dir, LimitSettings(max_zip_members=1000))
    assert caught.value.limit == "max_zip_members"
    assert "65535 members" in str(caught.value)
    assert not user_dir.exists() or _all_files(user_dir) == []


def test_an_end_record_that_understates_the_count_is_caught_by_walking_the_directory(
    tmp_path: Path, user_dir: Path
) -> None:
    data = _declare_members(make_zip({f"{i}.jpg": make_jpeg() for i in range(11)}), 1)
    with pytest.raises(LimitExceeded) as caught:
        _extract(tmp_path, data, user_dir, LimitSettings(max_zip_members=10))
    assert caught.value.limit == "max_zip_members"
    assert "more than 10 members" in str(caught.value)


def test_a_directory_bigger_than_the_member_limit_needs_is_refused_unread(tmp_path: Path) -> None:
    data = bytearray(make_zip({"a.jpg": make_jpeg()}))
    struct.pack_into("<L", data, _eocd_at(bytes(data)) + 12, 50 * 1024 * 1024)
    with pytest.raises(LimitExceeded) as caught:
        survey_zip(io.BytesIO(bytes(data)), 10)
    assert caught.value.limit == "max_zip_members"


def test_zip64_end_records_are_read_for_the_member_count(tmp_path: Path, user_dir: Path) -> None:
    huge = _as_zip64(make_zip({"a.jpg": make_jpeg()}), declared=5_000_000)
    with pytest.raises(LimitExceeded) as caught:
        _extract(tmp_path, huge, user_dir)
    assert caught.value.limit == "max_zip_members"
    assert "5000000 members" in str(caught.value)


def test_an_honest_zip64_archive_still_extracts(tmp_path: Path, user_dir: Path) -> None:
    data = _as_zip64(make_zip({"a.jpg": make_jpeg(), "b.png": make_png()}))
    assert survey_zip(io.BytesIO(data), 10).members == 2
    assert _names(_extract(tmp_path, data, user_dir)) == ["a.jpg", "b.png"]


def test_survey_of_an_open_file_leaves_its_position_alone() -> None:
    handle = io.BytesIO(make_zip({"a.jpg": make_jpeg(), "b.jpg": make_jpeg((1, 2, 3))}))
    handle.seek(7)
    assert survey_zip(handle, 10).members == 2
    assert handle.tell() == 7


def test_an_open_spooled_file_is_extracted_like_a_path(user_dir: Path) -> None:
    handle = io.BytesIO(make_zip({"a.jpg": make_jpeg()}))
    assert _names(extract_images(handle, user_dir, LIMITS)) == ["a.jpg"]


# ---- expansion ratio: the archive as a whole, and small members too ----------------


def _padded_jpeg(index: int, size: int) -> bytes:
    return make_jpeg((index % 256, 255 - index % 256, (index * 7) % 256), size=(16, 16)).ljust(
        size, b"\0"
    )


def test_a_small_member_padded_with_zeros_is_refused_by_its_ratio(
    tmp_path: Path, user_dir: Path
) -> None:
    """256 KiB is far below the old 1 MiB floor under which members were exempt."""
    data = make_zip({"padded.jpg": _padded_jpeg(1, 256 * 1024), "good.jpg": make_jpeg()})
    with pytest.raises(LimitExceeded) as caught:
        _extract(tmp_path, data, user_dir)
    assert caught.value.limit == "max_compression_ratio"
    assert "'padded.jpg'" in str(caught.value)


def test_many_members_each_under_the_floor_are_refused_by_the_archive_ratio(
    tmp_path: Path, user_dir: Path
) -> None:
    members = {f"{i}.jpg": bytes(4000) for i in range(300)}  # each below the member floor
    limits = LimitSettings(max_compression_ratio=10)
    with pytest.raises(LimitExceeded) as caught:
        _extract(tmp_path, make_zip(members), user_dir, limits)
    assert caught.value.limit == "max_compression_ratio"
    assert "its own size" in str(caught.value)


@pytest.fixture(scope="module")
def padded_jpegs_zip() -> bytes:
    """The issue's attack: 200 tiny JPEGs, each padded with zeros to 1 MiB (~350 KB zipped)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for i in range(200):
            archive.writestr(f"{i}.jpg", _padded_jpeg(i, 1024 * 1024))
    return out.getvalue()


def test_200_zero_padded_jpegs_are_refused_and_take_no_disk(
    tmp_path: Path, user_dir: Path, padded_jpegs_zip: bytes
) -> None:
    assert len(padded_jpegs_zip) < 400_000
    with pytest.raises(LimitExceeded) as caught:
        _extract(tmp_path, padded_jpegs_zip, user_dir)
    assert caught.value.limit == "max_compression_ratio"
    assert not user_dir.exists() or _all_files(user_dir) == []


def test_200_zero_padded_jpegs_never_become_200_mb_even_without_a_ratio_limit(
    tmp_path: Path, user_dir: Path, padded_jpegs_zip: bytes
) -> None:
    limits = LimitSettings(max_compression_ratio=1e12)
    result = _extract(tmp_path, padded_jpegs_zip, user_dir, limits)
    assert len(result.images) == 200
    stored = sum(p.stat().st_size for p in _all_files(user_dir))
    assert stored < 200 * 2048  # each file is its JPEG, cut at the end marker
    for image in result.images:
        data = image.path.read_bytes()
        assert data.endswith(b"\xff\xd9")
        assert image.sha256 == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("name", "image", "tail"),
    [
        ("a.jpg", make_jpeg(), bytes(3000)),
        ("b.png", make_png(), b"junk after IEND" * 100),
        ("c.heic", make_heic(), bytes(3000)),
    ],
)
def test_bytes_after_the_end_marker_are_not_stored(
    tmp_path: Path, user_dir: Path, name: str, image: bytes, tail: bytes
) -> None:
    result = _extract(tmp_path, make_zip({name: image + tail}), user_dir)
    (stored,) = result.images
    assert stored.path.read_bytes() == image
    assert stored.sha256 == hashlib.sha256(image).hexdigest()


def test_padded_copy_of_an_image_has_the_hash_of_the_original(
    tmp_path: Path, user_dir: Path
) -> None:
    """So the queue sees it as a duplicate of the same picture."""
    jpeg = make_jpeg()
    result = _extract(tmp_path, make_zip({"a.jpg": jpeg, "b.jpg": jpeg + bytes(500)}), user_dir)
    assert len({image.sha256 for image in result.images}) == 1


def test_an_archive_failing_midway_leaves_no_images_behind(tmp_path: Path, user_dir: Path) -> None:
    calls = []

    def failing_disk(_path: Path) -> int:
        calls.append(1)
        if len(calls) == 3:  # open, first member, then the second member's check fails
            raise OSError("the disk went away")
        return 10**12

    settings = LimitSettings(min_free_bytes=0)
    allowance = Allowance.open(settings, _Usage(), tmp_path, failing_disk)
    upload = tmp_path / "u.zip"
    upload.write_bytes(make_zip({"a.jpg": make_jpeg(), "b.jpg": make_jpeg((1, 2, 3))}))
    with pytest.raises(OSError, match="went away"):
        extract_images(upload, user_dir, LIMITS, allowance)
    assert _all_files(user_dir) == []


# ---- quota: stored in order until a member does not fit ------------------------------


class _Usage:
    bytes = 0
    items = 0


def _allowance(tmp_path: Path, **limits: int) -> Allowance:
    settings = LimitSettings(min_free_bytes=0, **limits)
    return Allowance.open(settings, _Usage(), tmp_path, lambda _path: 10**12)


def test_quota_stop_keeps_the_first_members_and_lists_every_later_one(
    tmp_path: Path, user_dir: Path
) -> None:
    members = {f"{i}.jpg": make_jpeg((i, i, i)) for i in range(4)}
    members["../evil.jpg"] = make_jpeg()
    members["notes/.hidden.jpg"] = make_jpeg()
    allowance = _allowance(tmp_path, user_max_items=2)
    upload = tmp_path / "u.zip"
    upload.write_bytes(make_zip(members))
    result = extract_images(upload, user_dir, LIMITS, allowance)
    assert _names(result) == ["0.jpg", "1.jpg"]
    assert _reasons(result) == {
        "2.jpg": "quota exceeded",
        "3.jpg": "quota exceeded",
        "../evil.jpg": "unsafe path (absolute, or reaching outside the archive)",
    }
    assert result.stopped_by == "user_max_items"
    assert sorted(p.name for p in _all_files(user_dir)) == ["0.jpg", "1.jpg"]


def test_a_member_crossing_the_byte_quota_is_removed_after_being_measured(
    tmp_path: Path, user_dir: Path
) -> None:
    small, big = make_jpeg(size=(8, 8)), make_jpeg(size=(300, 300))
    allowance = _allowance(tmp_path, user_max_bytes=len(small) + len(big) // 2)
    upload = tmp_path / "u.zip"
    upload.write_bytes(make_zip({"small.jpg": small, "big.jpg": big, "tiny.jpg": small}))
    result = extract_images(upload, user_dir, LIMITS, allowance)
    assert _names(result) == ["small.jpg"]
    assert _reasons(result) == {"big.jpg": "quota exceeded", "tiny.jpg": "quota exceeded"}
    assert result.stopped_by == "user_max_bytes"
    assert [p.name for p in _all_files(user_dir)] == ["small.jpg"]


# ---- ZipExtraction: refused as a whole when opened, then images one at a time ---------


def test_images_are_handed_out_before_the_rest_of_the_archive_is_read(
    tmp_path: Path, user_dir: Path
) -> None:
    upload = tmp_path / "u.zip"
    upload.write_bytes(make_zip({f"{i}.jpg": make_jpeg((i, i, i)) for i in range(3)}))
    with ZipExtraction(upload, user_dir, LIMITS) as extraction:
        images = extraction.images()
        first = next(images)
        assert first.original_name == "0.jpg"
        assert first.size == first.path.stat().st_size
        assert extraction.members_left == 2
        assert [p.name for p in _all_files(user_dir)] == ["0.jpg"]
        assert [image.original_name for image in images] == ["1.jpg", "2.jpg"]
        assert extraction.members_left == 0


def test_every_whole_archive_refusal_comes_when_the_archive_is_opened(
    tmp_path: Path, user_dir: Path
) -> None:
    """The bomb is the last member: opening refuses it before a single image is stored."""
    members = {f"{i}.jpg": make_jpeg((i, i, i)) for i in range(3)}
    members["padded.jpg"] = _padded_jpeg(1, 256 * 1024)
    upload = tmp_path / "u.zip"
    upload.write_bytes(make_zip(members))
    with pytest.raises(LimitExceeded) as caught:
        ZipExtraction(upload, user_dir, LIMITS)
    assert caught.value.limit == "max_compression_ratio"
    assert not user_dir.exists()


@pytest.mark.parametrize("case", HOSTILE_ZIPS, ids=lambda case: case.name)
def test_a_refused_hostile_archive_is_refused_on_opening(
    tmp_path: Path, user_dir: Path, case: HostileCase
) -> None:
    upload = tmp_path / "u.zip"
    upload.write_bytes(case.build())
    if case.outcome == "partial":
        with ZipExtraction(upload, user_dir, LIMITS) as extraction:
            assert [image.path.name for image in extraction.images()] == ["good.jpg"]
        return
    with pytest.raises((InvalidUpload, LimitExceeded)):
        ZipExtraction(upload, user_dir, LIMITS)


def test_an_expansion_limit_tripped_only_while_decompressing_skips_that_member(
    tmp_path: Path, user_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stands in for headers lying past zipfile's own checks: with the directory check
    switched off, the bomb is found in its bytes, after images were already handed out."""
    monkeypatch.setattr(archive_module, "check_declared_limits", lambda *_args: None)
    members = {"a.jpg": make_jpeg(), "padded.jpg": _padded_jpeg(1, 256 * 1024)}
    members["b.jpg"] = make_jpeg((1, 2, 3))
    result = _extract(tmp_path, make_zip(members), user_dir)
    assert _names(result) == ["a.jpg", "b.jpg"]
    assert "looks like a ZIP bomb" in _reasons(result)["padded.jpg"]


def test_an_extraction_is_iterated_once(tmp_path: Path, user_dir: Path) -> None:
    upload = tmp_path / "u.zip"
    upload.write_bytes(make_zip({"a.jpg": make_jpeg()}))
    with ZipExtraction(upload, user_dir, LIMITS) as extraction:
        list(extraction.images())
        with pytest.raises(RuntimeError):
            list(extraction.images())
