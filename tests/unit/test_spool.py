"""The uploaded archive's pages are dropped from the page cache as extraction reads them."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from lumen.config import LimitSettings
from lumen.ingest.archive import ZipExtraction
from lumen.ingest.spool import ReadPages, file_descriptor
from tests.support.hostile import make_jpeg, make_zip


class Advice:
    """Records each posix_fadvise call as (offset, length), checking it is DONTNEED."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def __call__(self, fd: int, offset: int, length: int, advice: int) -> None:
        assert fd >= 0 and advice == os.POSIX_FADV_DONTNEED
        self.calls.append((offset, length))


def _archive(count: int) -> bytes:
    return make_zip({f"{i}.jpg": make_jpeg((i * 30, 40, 50)) for i in range(count)})


def test_each_extracted_member_drops_the_pages_before_the_next_one(tmp_path: Path) -> None:
    data = _archive(3)
    path = tmp_path / "upload.zip"
    path.write_bytes(data)
    advice = Advice()
    heard_when_handed_out = []
    with (
        path.open("rb") as handle,
        ZipExtraction(handle, tmp_path / "out", LimitSettings(), advise=advice) as extraction,
    ):
        for _image in extraction.images():
            heard_when_handed_out.append(len(advice.calls))
    # each member's bytes are let go as soon as it is stored, not when the upload ends
    assert heard_when_handed_out == [1, 2, 3]
    starts = [offset for offset, _ in advice.calls]
    ends = [offset + length for offset, length in advice.calls]
    assert starts == [0, *ends[:-1]]  # contiguous, front to back, never twice
    assert ends[-1] == len(data)  # the whole archive once the last member is read


def test_a_spooled_upload_still_in_memory_asks_nothing() -> None:
    advice = Advice()
    with tempfile.SpooledTemporaryFile(max_size=1024**2) as spool:
        spool.write(b"x" * 100)
        assert file_descriptor(spool) is None
        ReadPages(spool, advice).drop_before(100)
        spool.write(b"y" * 1024**2)  # rolled over to a real file
        assert file_descriptor(spool) is not None
        ReadPages(spool, advice).drop_before(100)
    assert advice.calls == [(0, 100)]


def test_a_file_system_refusing_the_advice_is_not_asked_again(tmp_path: Path) -> None:
    calls = []

    def refusing(fd: int, offset: int, length: int, advice: int) -> None:
        calls.append(offset)
        raise OSError(22, "invalid argument")

    with (tmp_path / "f").open("wb") as handle:
        pages = ReadPages(handle, refusing)
        pages.drop_before(10)
        pages.drop_before(20)
    assert calls == [0]
