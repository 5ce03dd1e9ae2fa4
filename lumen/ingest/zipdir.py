"""A ZIP's member count, read from its end records before `zipfile` loads the directory.

`zipfile.ZipFile` builds a `ZipInfo` (about 500 bytes of RAM) for every central-directory
entry before any limit can be checked, so a small archive of millions of empty members
costs gigabytes. `survey_zip` reads the end-of-central-directory record (and the ZIP64 one
when present), refuses a directory larger than `max_zip_members` entries could need, then
walks the directory's fixed-size headers counting entries (the count in the end record can
lie), stopping as soon as the count passes the limit.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from lumen.errors import InvalidUpload, LimitExceeded

# Generous: a central-directory entry is 46 bytes plus its name, extra field and comment.
DIRECTORY_BYTES_PER_MEMBER = 4096
_EOCD = struct.Struct("<4s4H2LH")  # signature, disks, entries here/total, size, offset, comment
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")
_ENTRY = struct.Struct("<4s4B4HL2L5H2L")  # a central-directory file header (46 bytes)
_EOCD_SIG = b"PK\x05\x06"
_ZIP64_LOCATOR_SIG = b"PK\x06\x07"
_ZIP64_EOCD_SIG = b"PK\x06\x06"
_ENTRY_SIG = b"PK\x01\x02"
_MAX_COMMENT = 0xFFFF


@dataclass(frozen=True)
class ZipSurvey:
    """What the end records say: members (counted), directory size, archive size."""

    members: int
    directory_bytes: int
    archive_bytes: int


def survey_zip(source: Path | BinaryIO, max_members: int) -> ZipSurvey:
    """Count the members of the ZIP at `source`, refusing more than `max_members`."""
    if isinstance(source, Path):
        with source.open("rb") as handle:
            return _survey(handle, max_members)
    start = source.tell()
    try:
        return _survey(source, max_members)
    finally:
        source.seek(start)


def _bad(why: str) -> InvalidUpload:
    return InvalidUpload(f"the upload is not a readable ZIP archive (damaged or truncated?): {why}")


def _survey(fp: BinaryIO, max_members: int) -> ZipSurvey:
    size = fp.seek(0, os.SEEK_END)
    tail_start = max(size - _EOCD.size - _MAX_COMMENT, 0)
    fp.seek(tail_start)
    tail = fp.read()
    at = tail.rfind(_EOCD_SIG)
    if at < 0 or at + _EOCD.size > len(tail):
        raise _bad("no end-of-central-directory record")
    eocd_pos = tail_start + at
    _, _, _, _, declared, dir_bytes, dir_offset, _ = _EOCD.unpack_from(tail, at)
    end_records = eocd_pos
    zip64 = _zip64_record(fp, eocd_pos)
    if zip64 is not None:
        declared, dir_bytes, dir_offset = zip64
        end_records = eocd_pos - _ZIP64_LOCATOR.size - _ZIP64_EOCD.size
    if declared > max_members:
        raise _too_many(str(declared), max_members)
    if dir_bytes > max(max_members, 1) * DIRECTORY_BYTES_PER_MEMBER:
        raise LimitExceeded(
            f"the archive's directory is {dir_bytes} bytes, more than {max_members} members "
            f"need; the limit is {max_members} members",
            "max_zip_members",
        )
    prepended = end_records - dir_bytes - dir_offset  # data before the archive (as zipfile)
    if prepended < 0:
        raise _bad("the central directory lies outside the file")
    fp.seek(dir_offset + prepended)
    directory = fp.read(dir_bytes)
    if len(directory) != dir_bytes:
        raise _bad("the central directory is cut short")
    members = _count_entries(directory, max_members)
    return ZipSurvey(members, dir_bytes, size)


def _zip64_record(fp: BinaryIO, eocd_pos: int) -> tuple[int, int, int] | None:
    """(entries, directory size, directory offset) from the ZIP64 end record, if any."""
    locator_pos = eocd_pos - _ZIP64_LOCATOR.size
    if locator_pos < 0:
        return None
    fp.seek(locator_pos)
    locator = fp.read(_ZIP64_LOCATOR.size)
    if len(locator) != _ZIP64_LOCATOR.size or not locator.startswith(_ZIP64_LOCATOR_SIG):
        return None
    record_pos = locator_pos - _ZIP64_EOCD.size
    if record_pos < 0:
        raise _bad("the ZIP64 end record is missing")
    fp.seek(record_pos)
    record = fp.read(_ZIP64_EOCD.size)
    if len(record) != _ZIP64_EOCD.size or not record.startswith(_ZIP64_EOCD_SIG):
        raise _bad("the ZIP64 end record is damaged")
    fields = _ZIP64_EOCD.unpack(record)
    return fields[7], fields[8], fields[9]


def _count_entries(directory: bytes, max_members: int) -> int:
    pos = count = 0
    while pos + _ENTRY.size <= len(directory):
        if directory[pos : pos + 4] != _ENTRY_SIG:
            raise _bad("a central-directory entry is damaged")
        count += 1
        if count > max_members:
            raise _too_many(f"more than {max_members}", max_members)
        fields = _ENTRY.unpack_from(directory, pos)
        pos += _ENTRY.size + fields[12] + fields[13] + fields[14]
    return count


def _too_many(described: str, limit: int) -> LimitExceeded:
    return LimitExceeded(
        f"the archive has {described} members; the limit is {limit}", "max_zip_members"
    )
