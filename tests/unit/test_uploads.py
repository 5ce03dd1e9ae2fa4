"""UploadService through an in-memory queue: dedupe, skipped members, quotas, the disk floor,
and ZIPs queued in chunks while they are still being extracted."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lumen.config import LimitSettings, QueueSettings, Settings
from lumen.errors import InsufficientStorage, LimitExceeded, QuotaExceeded
from lumen.storage.queue import EnqueueResult, NewItem
from lumen.uploads import UploadService
from tests.support.hostile import make_jpeg, make_pdf, make_png, make_zip
from tests.support.scanned import headed_pdf, scanned_pdf

USER = "alice"
PLENTY = 10**15


@dataclass(frozen=True)
class FakeUsage:
    bytes: int
    items: int


@dataclass
class FakeQueue:
    """The enqueue/usage half of QueueStore: one item per content, usage of stored items."""

    items: dict[str, dict[str, NewItem]] = field(default_factory=dict)
    broken: bool = False
    calls: list[list[str]] = field(default_factory=list)  # the item names of every call
    fail_at_call: int = 0  # 1-based; 0: never
    watch: Callable[[], object] | None = None  # looked at on every call, kept in `seen`
    seen: list[object] = field(default_factory=list)

    def enqueue(self, user: str, items: list[NewItem]) -> EnqueueResult:
        self.calls.append([it.item for it in items])
        if self.watch is not None:
            self.seen.append(self.watch())
        if self.broken or len(self.calls) == self.fail_at_call:
            raise ConnectionError("redis is down")
        space = self.items.setdefault(user, {})
        by_hash = {it.sha256: name for name, it in space.items()}
        queued, duplicates = [], {}
        for it in items:
            if it.sha256 in by_hash:
                duplicates[it.item] = by_hash[it.sha256]
                continue
            space[it.item] = it
            by_hash[it.sha256] = it.item
            queued.append(it.item)
        return EnqueueResult(queued, duplicates)

    def usage(self, user: str) -> FakeUsage:
        space = self.items.get(user, {})
        return FakeUsage(sum(it.size for it in space.values()), len(space))


class FakeDisk:
    """Free space that shrinks as files are written under the data dir."""

    def __init__(self, data_dir: Path, capacity: int) -> None:
        self.data_dir = data_dir
        self.capacity = capacity

    def __call__(self, _path: Path) -> int:
        used = sum(p.stat().st_size for p in self.data_dir.rglob("*") if p.is_file())
        return self.capacity - used


NEVER_S = 1e9  # a flush interval no test reaches: chunks are cut by size alone


def _service(
    tmp_path: Path,
    queue: FakeQueue | None = None,
    free: int = PLENTY,
    chunk: int = 32,
    flush_s: float = NEVER_S,
    clock: Callable[[], float] = lambda: 0.0,
    first: int | None = None,
    **limits: int,
) -> tuple[UploadService, FakeQueue]:
    """A service over a fake queue; chunks hold `chunk` items from the first one on unless
    `first` says where they start growing."""
    queue_settings = QueueSettings(
        enqueue_chunk=chunk, enqueue_first_chunk=first or chunk, enqueue_flush_s=flush_s
    )
    settings = Settings(
        data_dir=tmp_path / "data", limits=LimitSettings(**limits), queue=queue_settings
    )
    queue = queue or FakeQueue()
    return UploadService(settings, queue, disk_free=lambda _path: free, clock=clock), queue


def _zip(tmp_path: Path, members: dict[str, bytes]) -> Path:
    path = tmp_path / "upload.zip"
    path.write_bytes(make_zip(members))
    return path


def _pdf(tmp_path: Path, pages: list[str]) -> Path:
    path = tmp_path / "upload.pdf"
    path.write_bytes(make_pdf(pages))
    return path


def _stored(tmp_path: Path) -> list[str]:
    root = tmp_path / "data" / "uploads" / USER
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _images(count: int, prefix: str = "", shade: int = 0) -> dict[str, bytes]:
    """`count` JPEGs of distinct content (another `shade` gives other content again)."""
    return {f"{prefix}{i}.jpg": make_jpeg((i * 40, 10 + shade, 200 - i * 20)) for i in range(count)}


def test_every_image_is_queued_with_the_size_of_its_stored_file(tmp_path: Path) -> None:
    service, queue = _service(tmp_path)
    members = {"a.jpg": make_jpeg(), "b.png": make_png()}
    outcome = service.ingest_zip(USER, _zip(tmp_path, members))
    assert outcome.queued == ["uploads/alice/a.jpg", "uploads/alice/b.png"]
    assert outcome.message == "Uploaded and queued 2 images."
    sizes = {name: it.size for name, it in queue.items[USER].items()}
    assert sizes == {f"uploads/alice/{name}": len(data) for name, data in members.items()}
    assert service.usage(USER).bytes == sum(len(data) for data in members.values())


def test_content_already_in_the_space_is_a_duplicate_and_its_file_removed(tmp_path: Path) -> None:
    service, _ = _service(tmp_path)
    service.ingest_zip(USER, _zip(tmp_path, {"a.jpg": make_jpeg()}))
    outcome = service.ingest_zip(USER, _zip(tmp_path, {"again.jpg": make_jpeg()}))
    assert outcome.queued == []
    assert outcome.duplicates == {"uploads/alice/again.jpg": "uploads/alice/a.jpg"}
    assert _stored(tmp_path) == ["a.jpg"]


def test_skipped_members_are_listed_with_their_reasons(tmp_path: Path) -> None:
    service, _ = _service(tmp_path)
    members = {"good.jpg": make_jpeg(), "notes.jpg": b"just text", "../evil.jpg": make_jpeg()}
    outcome = service.ingest_zip(USER, _zip(tmp_path, members))
    assert outcome.queued == ["uploads/alice/good.jpg"]
    assert set(outcome.skipped) == {"notes.jpg", "../evil.jpg"}
    assert "not a JPEG, PNG or HEIC" in outcome.skipped["notes.jpg"]


def test_an_archive_crossing_the_item_quota_keeps_what_fits_and_says_so(tmp_path: Path) -> None:
    service, queue = _service(tmp_path, user_max_items=3)
    service.ingest_zip(USER, _zip(tmp_path, _images(1)))
    outcome = service.ingest_zip(USER, _zip(tmp_path, _images(5, prefix="n", shade=100)))
    assert outcome.queued == ["uploads/alice/n0.jpg", "uploads/alice/n1.jpg"]
    assert outcome.skipped == {f"n{i}.jpg": "quota exceeded" for i in (2, 3, 4)}
    assert "3 more were not stored" in outcome.message
    assert "quota of 3 items is full" in outcome.message
    assert "POST /reset" in outcome.message
    assert queue.usage(USER).items == 3
    assert _stored(tmp_path) == ["0.jpg", "n0.jpg", "n1.jpg"]


def test_an_archive_crossing_the_byte_quota_never_stores_past_it(tmp_path: Path) -> None:
    images = _images(5)
    quota = sum(len(images[f"{i}.jpg"]) for i in range(3)) + 10
    service, queue = _service(tmp_path, user_max_bytes=quota)
    outcome = service.ingest_zip(USER, _zip(tmp_path, images))
    assert len(outcome.queued) == 3
    assert set(outcome.skipped) == {"3.jpg", "4.jpg"}
    assert f"quota of {quota} bytes is full" in outcome.message
    assert queue.usage(USER).bytes <= quota
    assert len(_stored(tmp_path)) == 3


def test_repeated_content_inside_one_archive_is_charged_once(tmp_path: Path) -> None:
    jpeg = make_jpeg()
    service, _ = _service(tmp_path, user_max_items=2)
    members = {"a.jpg": jpeg, "b.jpg": jpeg, "c.png": make_png()}
    outcome = service.ingest_zip(USER, _zip(tmp_path, members))
    assert outcome.skipped == {}
    assert outcome.duplicates == {"uploads/alice/b.jpg": "uploads/alice/a.jpg"}
    assert _stored(tmp_path) == ["a.jpg", "c.png"]


def test_a_full_quota_refuses_the_upload_before_anything_is_written(tmp_path: Path) -> None:
    service, _ = _service(tmp_path, user_max_items=2)
    service.ingest_zip(USER, _zip(tmp_path, _images(2)))
    with pytest.raises(QuotaExceeded) as caught:
        service.ingest_zip(USER, _zip(tmp_path, {"more.jpg": make_jpeg((1, 1, 1))}))
    assert caught.value.status == 413
    assert caught.value.code == "quota_exceeded"
    assert caught.value.limit == "user_max_items"
    assert "delete queued items" in caught.value.message
    assert _stored(tmp_path) == ["0.jpg", "1.jpg"]


def test_an_upload_whose_first_image_does_not_fit_is_refused(tmp_path: Path) -> None:
    service, queue = _service(tmp_path, user_max_bytes=100)
    with pytest.raises(QuotaExceeded) as caught:
        service.ingest_zip(USER, _zip(tmp_path, _images(2)))
    assert caught.value.limit == "user_max_bytes"
    assert _stored(tmp_path) == []
    assert queue.items == {}


def test_zero_means_no_quota(tmp_path: Path) -> None:
    service, _ = _service(tmp_path, user_max_items=0, user_max_bytes=0)
    outcome = service.ingest_zip(USER, _zip(tmp_path, _images(4)))
    assert len(outcome.queued) == 4
    report = service.usage(USER)
    assert (report.items, report.max_items, report.max_bytes) == (4, 0, 0)


def test_below_the_free_space_floor_nothing_is_stored_and_the_status_is_507(
    tmp_path: Path,
) -> None:
    service, queue = _service(tmp_path, free=10 * 1024**2, min_free_bytes=64 * 1024**2)
    with pytest.raises(InsufficientStorage) as caught:
        service.ingest_zip(USER, _zip(tmp_path, _images(2)))
    assert (caught.value.status, caught.value.code) == (507, "insufficient_storage")
    assert _stored(tmp_path) == []
    assert queue.items == {}


def test_an_archive_reaching_the_free_space_floor_midway_keeps_what_fit(tmp_path: Path) -> None:
    images = _images(4)
    room = len(images["0.jpg"]) + len(images["1.jpg"]) + 100
    data_dir = tmp_path / "data"
    floor = 4096
    settings = Settings(data_dir=data_dir, limits=LimitSettings(min_free_bytes=floor))
    service = UploadService(settings, FakeQueue(), disk_free=FakeDisk(data_dir, floor + room))
    outcome = service.ingest_zip(USER, _zip(tmp_path, images))
    assert len(outcome.queued) == 2
    assert outcome.skipped == {
        "2.jpg": "the server is low on disk space",
        "3.jpg": "the server is low on disk space",
    }
    assert "2 more were not stored" in outcome.message


def test_a_failed_enqueue_leaves_no_files_behind(tmp_path: Path) -> None:
    service, _ = _service(tmp_path, queue=FakeQueue(broken=True))
    with pytest.raises(ConnectionError):
        service.ingest_zip(USER, _zip(tmp_path, _images(3)))
    assert _stored(tmp_path) == []


def test_pdf_page_text_is_capped_where_it_is_stored(tmp_path: Path) -> None:
    service, queue = _service(tmp_path, max_pdf_text_chars=12)
    outcome = service.ingest_pdf(USER, _pdf(tmp_path, ["alpha beta gamma delta epsilon"]), "d.pdf")
    (item,) = outcome.queued
    assert queue.items[USER][item].text == "alpha beta g"
    assert queue.items[USER][item].size == (tmp_path / "data" / item).stat().st_size


def test_a_pdf_crossing_the_quota_keeps_its_first_pages_and_removes_the_rest(
    tmp_path: Path,
) -> None:
    service, queue = _service(tmp_path, user_max_items=2)
    outcome = service.ingest_pdf(USER, _pdf(tmp_path, ["one", "two", "three", "four"]), "d.pdf")
    assert outcome.queued == [
        "uploads/alice/pdfs/d_page_001.jpg",
        "uploads/alice/pdfs/d_page_002.jpg",
    ]
    assert outcome.skipped == {"d page 3": "quota exceeded", "d page 4": "quota exceeded"}
    assert outcome.message.startswith("Processed 2 pages from PDF. 2 more were not stored")
    assert _stored(tmp_path) == ["pdfs/d_page_001.jpg", "pdfs/d_page_002.jpg"]
    assert queue.usage(USER).items == 2


def test_a_pdf_upload_with_a_full_quota_is_refused_before_rendering(tmp_path: Path) -> None:
    service, _ = _service(tmp_path, user_max_items=1)
    service.ingest_zip(USER, _zip(tmp_path, _images(1)))
    with pytest.raises(QuotaExceeded):
        service.ingest_pdf(USER, _pdf(tmp_path, ["one"]), "d.pdf")
    assert _stored(tmp_path) == ["0.jpg"]


def test_usage_reports_bytes_and_items_against_the_quota(tmp_path: Path) -> None:
    service, _ = _service(tmp_path, user_max_bytes=10**9, user_max_items=50)
    service.ingest_zip(USER, _zip(tmp_path, _images(2)))
    report = service.usage(USER)
    assert report.items == 2
    assert report.bytes == sum(p.stat().st_size for p in (tmp_path / "data").rglob("*.jpg"))
    assert (report.max_bytes, report.max_items) == (10**9, 50)


# ---- a ZIP is queued in chunks while it is still being extracted --------------------


def _watching(tmp_path: Path, **kwargs: int) -> FakeQueue:
    """A queue that notes which files are on disk whenever it is called."""
    return FakeQueue(watch=lambda: _stored(tmp_path), **kwargs)


def _items(count: int) -> list[str]:
    return [f"uploads/alice/{i}.jpg" for i in range(count)]


def test_chunks_are_queued_while_the_archive_is_still_being_extracted(tmp_path: Path) -> None:
    service, queue = _service(tmp_path, queue=_watching(tmp_path), chunk=2)
    outcome = service.ingest_zip(USER, _zip(tmp_path, _images(5)))
    assert queue.calls == [_items(2), _items(4)[2:], _items(5)[4:]]
    # when the first chunk was queued, the last three members were not extracted yet
    assert queue.seen[0] == ["0.jpg", "1.jpg"]
    assert queue.seen[1] == ["0.jpg", "1.jpg", "2.jpg", "3.jpg"]
    assert outcome.queued == _items(5)
    assert outcome.message == "Uploaded and queued 5 images."


def test_the_first_chunk_holds_one_image_and_each_next_one_twice_the_last(
    tmp_path: Path,
) -> None:
    service, queue = _service(tmp_path, queue=_watching(tmp_path), chunk=4, first=1)
    members = {**_images(6), **_images(6, prefix="b", shade=50)}
    outcome = service.ingest_zip(USER, _zip(tmp_path, members))
    assert [len(call) for call in queue.calls] == [1, 2, 4, 4, 1]
    assert queue.seen[0] == ["0.jpg"]  # queued while the other eleven were still in the ZIP
    assert len(outcome.queued) == 12
    assert outcome.message == "Uploaded and queued 12 images."


def test_by_default_an_upload_starts_with_one_image_and_grows_to_the_chunk_size(
    tmp_path: Path,
) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    service = UploadService(settings, FakeQueue(), disk_free=lambda _path: PLENTY)
    queue = service.queue
    assert isinstance(queue, FakeQueue)
    service.ingest_zip(USER, _zip(tmp_path, _images(70)))
    assert settings.queue.enqueue_chunk == 32
    assert [len(call) for call in queue.calls] == [1, 2, 4, 8, 16, 32, 7]


@pytest.mark.parametrize("cap", [1, 3, 8])
def test_growing_chunks_answer_what_one_call_answers(tmp_path: Path, cap: int) -> None:
    outcomes = []
    for first, size, where in ((1000, 1000, tmp_path / "one"), (1, cap, tmp_path / "grown")):
        where.mkdir()
        service, queue = _service(where, chunk=size, first=first, user_max_items=5)
        service.ingest_zip(USER, _zip(where, {"first.png": make_png()}))
        outcomes.append(service.ingest_zip(USER, _zip(where, _mixed_archive())))
    assert len(queue.calls) > 2
    assert outcomes[1] == outcomes[0]
    assert outcomes[0].queued == [f"uploads/alice/{n}.jpg" for n in (0, 1, 3)]


def _mixed_archive() -> dict[str, bytes]:
    """Skipped members, content repeated across chunks, and a quota crossed near the end."""
    images = _images(6)
    return {
        "0.jpg": images["0.jpg"],
        "notes.jpg": b"just text",
        "1.jpg": images["1.jpg"],
        "again.jpg": images["0.jpg"],
        "../evil.jpg": images["2.jpg"],
        "old.jpg": make_png(),  # already in the space before this upload
        "3.jpg": images["3.jpg"],
        "4.jpg": images["4.jpg"],
        "5.jpg": images["5.jpg"],
    }


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_the_chunked_response_is_the_one_shot_response(tmp_path: Path, chunk: int) -> None:
    outcomes, spaces, files = [], [], []
    for size, where in ((1000, tmp_path / "one"), (chunk, tmp_path / "chunked")):
        where.mkdir()
        service, queue = _service(where, chunk=size, user_max_items=5)
        service.ingest_zip(USER, _zip(where, {"first.png": make_png()}))
        outcomes.append(service.ingest_zip(USER, _zip(where, _mixed_archive())))
        spaces.append({name: it.sha256 for name, it in queue.items[USER].items()})
        files.append(_stored(where))
    one, chunked = outcomes
    assert len(queue.calls) > 2  # the second upload really went in several chunks
    assert chunked == one
    assert one.queued == ["uploads/alice/0.jpg", "uploads/alice/1.jpg", "uploads/alice/3.jpg"]
    assert one.duplicates == {
        "uploads/alice/again.jpg": "uploads/alice/0.jpg",
        "uploads/alice/old.png": "uploads/alice/first.png",
    }
    assert set(one.skipped) == {"notes.jpg", "../evil.jpg", "4.jpg", "5.jpg"}
    assert "2 more were not stored" in one.message
    assert spaces[0] == spaces[1]
    assert files[0] == files[1] == ["0.jpg", "1.jpg", "3.jpg", "first.png"]


def test_content_repeated_in_a_later_chunk_is_a_duplicate_and_its_copy_removed(
    tmp_path: Path,
) -> None:
    jpeg = make_jpeg()
    service, queue = _service(tmp_path, chunk=1)
    members = {"a.jpg": jpeg, "b.png": make_png(), "c.jpg": jpeg}
    outcome = service.ingest_zip(USER, _zip(tmp_path, members))
    assert len(queue.calls) == 3
    assert outcome.queued == ["uploads/alice/a.jpg", "uploads/alice/b.png"]
    assert outcome.duplicates == {"uploads/alice/c.jpg": "uploads/alice/a.jpg"}
    assert _stored(tmp_path) == ["a.jpg", "b.png"]


def test_a_quota_crossed_midway_keeps_the_chunks_already_queued(tmp_path: Path) -> None:
    service, queue = _service(tmp_path, chunk=2, user_max_items=3)
    outcome = service.ingest_zip(USER, _zip(tmp_path, _images(5)))
    assert queue.calls == [_items(2), _items(3)[2:]]
    assert outcome.queued == _items(3)
    assert outcome.skipped == {"3.jpg": "quota exceeded", "4.jpg": "quota exceeded"}
    assert "2 more were not stored" in outcome.message
    assert queue.usage(USER).items == 3
    assert _stored(tmp_path) == ["0.jpg", "1.jpg", "2.jpg"]


def test_a_bomb_in_the_last_member_is_refused_before_any_chunk_is_queued(tmp_path: Path) -> None:
    members = _images(4)
    members["padded.jpg"] = make_jpeg((9, 9, 9)).ljust(256 * 1024, b"\0")
    service, queue = _service(tmp_path, chunk=1)
    with pytest.raises(LimitExceeded) as caught:
        service.ingest_zip(USER, _zip(tmp_path, members))
    assert caught.value.limit == "max_compression_ratio"
    assert queue.calls == []
    assert _stored(tmp_path) == []


def test_a_queue_failing_midway_keeps_earlier_chunks_and_removes_the_rest(
    tmp_path: Path,
) -> None:
    service, queue = _service(tmp_path, queue=FakeQueue(fail_at_call=2), chunk=2)
    with pytest.raises(ConnectionError):
        service.ingest_zip(USER, _zip(tmp_path, _images(5)))
    assert list(queue.items[USER]) == _items(2)
    assert _stored(tmp_path) == ["0.jpg", "1.jpg"]  # 2 and 3 removed, 4 never extracted


def test_an_extraction_failing_midway_removes_the_images_not_yet_queued(tmp_path: Path) -> None:
    calls = []

    def failing_disk(_path: Path) -> int:
        calls.append(1)
        if len(calls) == 5:  # the upload's start, members 0-2, then member 3's check fails
            raise OSError("the disk went away")
        return PLENTY

    settings = Settings(
        data_dir=tmp_path / "data",
        queue=QueueSettings(enqueue_chunk=2, enqueue_first_chunk=2, enqueue_flush_s=NEVER_S),
    )
    queue = FakeQueue()
    service = UploadService(settings, queue, disk_free=failing_disk)
    with pytest.raises(OSError, match="went away"):
        service.ingest_zip(USER, _zip(tmp_path, _images(5)))
    assert list(queue.items[USER]) == _items(2)
    assert _stored(tmp_path) == ["0.jpg", "1.jpg"]


def test_a_chunk_goes_once_its_first_image_has_waited_the_flush_interval(
    tmp_path: Path,
) -> None:
    ticks = iter(0.3 * n for n in range(100))  # each stored image takes 0.3 s
    service, queue = _service(tmp_path, chunk=100, flush_s=0.5, clock=lambda: next(ticks))
    service.ingest_zip(USER, _zip(tmp_path, _images(5)))
    assert queue.calls == [_items(3), _items(5)[3:]]


def test_on_chunk_hears_what_each_chunk_queued_while_extraction_goes_on(tmp_path: Path) -> None:
    heard: list[tuple[list[str], list[str]]] = []

    def hook(items: list[str]) -> None:
        heard.append((items, _stored(tmp_path)))

    jpeg = make_jpeg()
    members = {"0.jpg": jpeg, "1.png": make_png(), "2.jpg": jpeg, "3.jpg": jpeg}
    members["4.jpg"] = make_jpeg((1, 2, 3))
    service, _ = _service(tmp_path, chunk=2)
    service.ingest_zip(USER, _zip(tmp_path, members), on_chunk=hook)
    # [2, 3] queued nothing (both repeat 0.jpg), so the hook is not called for that chunk
    assert heard == [
        (["uploads/alice/0.jpg", "uploads/alice/1.png"], ["0.jpg", "1.png"]),
        (["uploads/alice/4.jpg"], ["0.jpg", "1.png", "4.jpg"]),
    ]


def test_a_failing_on_chunk_hook_never_fails_the_upload(tmp_path: Path) -> None:
    def broken(_items: list[str]) -> None:
        raise RuntimeError("the dispatcher is gone")

    service, queue = _service(tmp_path, chunk=2)
    outcome = service.ingest_zip(USER, _zip(tmp_path, _images(3)), on_chunk=broken)
    assert outcome.queued == _items(3)
    assert len(queue.calls) == 2


def test_a_pdf_tells_on_chunk_what_it_queued(tmp_path: Path) -> None:
    heard: list[list[str]] = []
    service, _ = _service(tmp_path)
    outcome = service.ingest_pdf(USER, _pdf(tmp_path, ["one", "two"]), "d.pdf", heard.append)
    assert heard == [outcome.queued]
    assert len(outcome.queued) == 2


def test_a_pdf_whose_ocr_runs_out_of_time_still_queues_every_page_with_a_note(
    tmp_path: Path,
) -> None:
    service, queue = _service(tmp_path)
    service.settings.limits.pdf_ocr_timeout_s = 0.001
    path = tmp_path / "scan.pdf"
    path.write_bytes(scanned_pdf(["Warranty: twenty four months.", "Descaling with vinegar."]))

    outcome = service.ingest_pdf(USER, path, "scan.pdf")

    assert len(outcome.queued) == 2
    assert "OCR ran out of time on 2 pages (1, 2); they are queued without text." in (
        outcome.message
    )
    metas = [queue.items[USER][item].meta for item in outcome.queued]
    assert [m["text_source"] for m in metas] == ["none", "none"]
    assert [m["ocr_note"] for m in metas] == ["ocr_timeout", "ocr_timeout"]  # /search/pdf shows it


def test_pdf_pages_record_where_their_text_came_from_and_their_headings(tmp_path: Path) -> None:
    service, queue = _service(tmp_path)
    path = tmp_path / "h.pdf"
    path.write_bytes(headed_pdf("Descaling the kettle", "Boil vinegar and water. " * 40))

    (item,) = service.ingest_pdf(USER, path, "h.pdf").queued

    meta = queue.items[USER][item].meta
    assert (meta["text_source"], meta["headings"]) == ("text", "Descaling the kettle")
    assert meta["section"] == ""  # no outline in this PDF; a page under one carries its path
    assert "ocr_note" not in meta  # only a page OCR left without text has one
