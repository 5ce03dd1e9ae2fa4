"""Turning an uploaded ZIP or PDF into files in the user's folder and items in their queue.

Every upload is charged to the user's quota file by file (see `lumen.quota`): it is refused
before anything is written when the quota is full (413, `quota_exceeded`) or the data disk is
below its floor (507, `insufficient_storage`). An upload that crosses the quota midway keeps
and queues what was stored before the crossing; every later image or page is listed in
`skipped` with the reason, and the message says so. When not one image fits, the upload is
refused as if the quota had been full from the start.

A ZIP is queued while it is still being extracted, so embedding starts during the upload:
images go to the queue in chunks that start at `queue.enqueue_first_chunk` (one image, so the
first embedding starts as soon as one image is stored) and double up to `queue.enqueue_chunk`,
a chunk going sooner once its first image has waited `queue.enqueue_flush_s` (checked as each
image is stored). The response adds up the chunks and is the same as if everything had been
queued in one call.
An optional `on_chunk` hook hears the items each chunk queued (to wake the dispatcher).

Refusals come before the first chunk: everything that can refuse an archive as a whole
(not a ZIP, damaged directory, encrypted, too many members, declared expansion or ratios,
a full quota, the disk floor) is decided from the end records and the central directory
before a single image is stored (see `lumen.ingest.archive`), and a member that turns out
bad while it is decompressed is only skipped. So a refused archive has queued nothing and
leaves nothing behind. What can still fail midway is the server itself (the disk, the
queue unreachable): the chunks already queued then stay queued and counted, like any
queued item (they show in `/status`), every stored image not yet queued is removed, and
the error is returned. Sending the same archive again is safe: what was queued comes back
as duplicates and the rest is queued.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from lumen.config import Settings
from lumen.errors import InsufficientStorage, InvalidUpload, LumenError, QuotaExceeded
from lumen.ingest.archive import ExtractedImage, ZipExtraction
from lumen.ingest.pdf import RenderedPage, ocr_note, render_pdf, sniff_pdf
from lumen.paths import relative_item, resolve_item, user_root
from lumen.quota import (
    Allowance,
    DiskFree,
    QuotaReport,
    UploadStopped,
    Usage,
    disk_free_bytes,
    low_disk_message,
    quota_full_message,
    quota_report,
)
from lumen.storage.queue import EnqueueResult, NewItem

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")

log = logging.getLogger(__name__)

# Told the items one chunk queued, right after it was queued (called on the upload's thread).
ChunkHook = Callable[[list[str]], None]


class UploadQueue(Protocol):
    """The queue as uploads use it: enqueue new items, read the user's usage."""

    def enqueue(self, user: str, items: list[NewItem]) -> EnqueueResult: ...

    def usage(self, user: str) -> Usage: ...


@dataclass
class UploadOutcome:
    message: str
    queued: list[str]
    duplicates: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def _doc_stem(filename: str | None) -> str:
    stem = Path(filename or "document.pdf").stem
    stem = re.sub(r"[^\w\-.]+", "_", stem, flags=re.UNICODE).strip("._") or "document"
    return stem[:80]


class UploadService:
    """Extracts into the user's folder within their quota, dedupes by content, enqueues."""

    def __init__(
        self,
        settings: Settings,
        queue: UploadQueue,
        disk_free: DiskFree = disk_free_bytes,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.disk_free = disk_free
        self.clock = clock

    def folder(self, user: str, *sub: str) -> Path:
        path = user_root(self.settings.data_dir, user).joinpath(*sub)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def usage(self, user: str) -> QuotaReport:
        """The user's stored bytes and items against the quota (`GET /usage`)."""
        return quota_report(self.queue.usage(user), self.settings.limits)

    def _allowance(self, user: str) -> Allowance:
        limits = self.settings.limits
        data_dir = self.settings.data_dir
        return Allowance.open(limits, self.queue.usage(user), data_dir, self.disk_free)

    def _stop_error(self, setting: str) -> LumenError:
        limits = self.settings.limits
        if setting == "min_free_bytes":
            return InsufficientStorage(low_disk_message(limits))
        return QuotaExceeded(quota_full_message(setting, limits), setting)

    def _stop_note(self, setting: str | None, skipped: int) -> str:
        if setting is None:
            return ""
        limits = self.settings.limits
        why = low_disk_message(limits) if setting == "min_free_bytes" else (
            quota_full_message(setting, limits)
        )  # fmt: skip
        return f" {skipped} more were not stored (see skipped): {why}."

    def ingest_zip(
        self, user: str, archive: Path | BinaryIO, on_chunk: ChunkHook | None = None
    ) -> UploadOutcome:
        """Extract a ZIP (a path or a seekable binary file) into the user's folder, queueing
        its images in chunks as they are stored (see the module docstring)."""
        allowance = self._allowance(user)
        chunks = _Chunks(self, user, on_chunk)
        with ZipExtraction(archive, self.folder(user), self.settings.limits, allowance) as zf:
            try:
                for image in zf.images():
                    chunks.add(self._image_item(user, image))
                chunks.flush()
            except BaseException:
                chunks.discard()  # stored but not queued: nothing may count them
                raise
        if not chunks.added and zf.stopped_by is not None:
            raise self._stop_error(zf.stopped_by)
        outcome = chunks.outcome
        outcome.skipped = {s.name: s.reason for s in zf.skipped}
        stopped = sum(1 for s in zf.skipped if s.reason == zf.stop_reason)
        note = self._stop_note(zf.stopped_by, stopped)
        outcome.message = f"Uploaded and queued {len(outcome.queued)} images.{note}"
        return outcome

    def _image_item(self, user: str, image: ExtractedImage) -> NewItem:
        return NewItem(
            item=relative_item(self.settings.data_dir, user, image.path),
            sha256=image.sha256,
            meta={"kind": "image", "original": image.original_name, "format": str(image.format)},
            size=image.size,
        )

    @staticmethod
    def is_zip(handle: BinaryIO) -> bool:
        head = handle.read(4)
        handle.seek(0)
        return head.startswith(ZIP_MAGIC)

    def ingest_pdf(
        self, user: str, path: Path, filename: str | None, on_chunk: ChunkHook | None = None
    ) -> UploadOutcome:
        """Render a PDF's pages into the user's folder and queue them in one call."""
        with path.open("rb") as handle:
            if not sniff_pdf(handle.read(1024)):
                raise InvalidUpload("upload_file must be a PDF or a ZIP of images")
        allowance = self._allowance(user)
        doc = _doc_stem(filename)
        pages = render_pdf(path, self.folder(user, "pdfs"), doc, self.settings.limits)
        kept, skipped, stopped_by = self._charge_pages(pages, doc, allowance)
        cap = self.settings.limits.max_pdf_text_chars
        items = [
            NewItem(
                item=relative_item(self.settings.data_dir, user, page.path),
                sha256=page.sha256,
                meta={
                    "kind": "pdf_page",
                    "doc": doc,
                    "page": page.page_number,
                    "text_source": page.text_source,
                    "headings": page.headings,
                    "section": page.section,
                    **({"ocr_note": page.note} if page.note else {}),
                },
                text=page.text[:cap],
                size=page.path.stat().st_size,
            )
            for page in kept
        ]
        outcome = self._enqueue(user, items)
        _tell(on_chunk, outcome.queued)
        outcome.skipped = skipped
        note = self._stop_note(stopped_by, len(skipped)) + ocr_note(kept)
        outcome.message = f"Processed {len(kept)} pages from PDF.{note}"
        return outcome

    def _charge_pages(
        self, pages: list[RenderedPage], doc: str, allowance: Allowance
    ) -> tuple[list[RenderedPage], dict[str, str], str | None]:
        """Keep the pages that fit, in order; remove the rest and name them in `skipped`."""
        kept: list[RenderedPage] = []
        for at, page in enumerate(pages):
            try:
                allowance.admit(0)
                allowance.charge(page.path.stat().st_size, page.sha256)
            except UploadStopped as stop:
                rest = pages[at:]
                _unlink(p.path for p in rest)
                if not kept:
                    raise self._stop_error(stop.setting) from None
                skipped = {f"{doc} page {p.page_number}": stop.reason for p in rest}
                return kept, skipped, stop.setting
            kept.append(page)
        return kept, {}, None

    def _enqueue(self, user: str, items: list[NewItem]) -> UploadOutcome:
        files = [self.settings.data_dir / it.item for it in items]
        try:
            result = self.queue.enqueue(user, items)
        except BaseException:
            _unlink(files)  # never leave files that no item or usage counts
            raise
        for dup in result.duplicates:  # the same content is already in the space
            path = self.settings.data_dir / dup
            path.unlink(missing_ok=True)
        return UploadOutcome("", result.queued, result.duplicates)

    def remove_user_files(self, user: str) -> None:
        shutil.rmtree(user_root(self.settings.data_dir, user), ignore_errors=True)

    def remove_file(self, user: str, item: str) -> None:
        resolve_item(self.settings.data_dir, user, item).unlink(missing_ok=True)


class _Chunks:
    """Queues items in growing chunks as they are produced, and adds up what the queue
    answered."""

    def __init__(self, service: UploadService, user: str, on_chunk: ChunkHook | None) -> None:
        self.service = service
        self.user = user
        self.on_chunk = on_chunk
        settings = service.settings.queue
        self.cap = settings.enqueue_chunk
        self.size = min(settings.enqueue_first_chunk, self.cap)  # doubles after each chunk
        self.flush_s = settings.enqueue_flush_s
        self.pending: list[NewItem] = []
        self.first_at = 0.0
        self.added = 0
        self.outcome = UploadOutcome("", [])

    def add(self, item: NewItem) -> None:
        now = self.service.clock()
        if not self.pending:
            self.first_at = now
        self.pending.append(item)
        self.added += 1
        if len(self.pending) >= self.size or now - self.first_at >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        items, self.pending = self.pending, []
        if not items:
            return
        self.size = min(2 * self.size, self.cap)
        part = self.service._enqueue(self.user, items)  # removes its files if it fails
        self.outcome.queued.extend(part.queued)
        self.outcome.duplicates.update(part.duplicates)
        _tell(self.on_chunk, part.queued)

    def discard(self) -> None:
        """Remove the files of the items stored but not queued yet."""
        data_dir = self.service.settings.data_dir
        _unlink(data_dir / it.item for it in self.pending)
        self.pending = []


def _tell(on_chunk: ChunkHook | None, queued: list[str]) -> None:
    """Call the hook with what a chunk queued; it only hurries things, so it never fails one."""
    if on_chunk is None or not queued:
        return
    try:
        on_chunk(list(queued))
    except Exception:
        log.warning("the upload's on_chunk hook failed; the items stay queued", exc_info=True)


def _unlink(paths: Iterable[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
