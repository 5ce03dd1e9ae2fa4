"""Turning an uploaded ZIP or PDF into files in the user's folder and items in their queue.

Every upload is charged to the user's quota file by file (see `lumen.quota`): it is refused
before anything is written when the quota is full (413, `quota_exceeded`) or the data disk is
below its floor (507, `insufficient_storage`). An upload that crosses the quota midway keeps
and queues what was stored before the crossing; every later image or page is listed in
`skipped` with the reason, and the message says so. When not one image fits, the upload is
refused as if the quota had been full from the start.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from lumen.config import Settings
from lumen.errors import InsufficientStorage, InvalidUpload, LumenError, QuotaExceeded
from lumen.ingest.archive import extract_images
from lumen.ingest.pdf import RenderedPage, render_pdf, sniff_pdf
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
        self, settings: Settings, queue: UploadQueue, disk_free: DiskFree = disk_free_bytes
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.disk_free = disk_free

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

    def ingest_zip(self, user: str, archive: Path | BinaryIO) -> UploadOutcome:
        """Extract a ZIP (a path or a seekable binary file) into the user's folder, queue it."""
        allowance = self._allowance(user)
        result = extract_images(archive, self.folder(user), self.settings.limits, allowance)
        if not result.images and result.stopped_by is not None:
            raise self._stop_error(result.stopped_by)
        items = [
            NewItem(
                item=relative_item(self.settings.data_dir, user, img.path),
                sha256=img.sha256,
                meta={"kind": "image", "original": img.original_name, "format": str(img.format)},
                size=img.path.stat().st_size,
            )
            for img in result.images
        ]
        outcome = self._enqueue(user, items)
        outcome.skipped = {s.name: s.reason for s in result.skipped}
        stopped = sum(1 for s in result.skipped if s.reason == result.stop_reason)
        note = self._stop_note(result.stopped_by, stopped)
        outcome.message = f"Uploaded and queued {len(outcome.queued)} images.{note}"
        return outcome

    @staticmethod
    def is_zip(handle: BinaryIO) -> bool:
        head = handle.read(4)
        handle.seek(0)
        return head.startswith(ZIP_MAGIC)

    def ingest_pdf(self, user: str, path: Path, filename: str | None) -> UploadOutcome:
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
                meta={"kind": "pdf_page", "doc": doc, "page": page.page_number},
                text=page.text[:cap],
                size=page.path.stat().st_size,
            )
            for page in kept
        ]
        outcome = self._enqueue(user, items)
        outcome.skipped = skipped
        note = self._stop_note(stopped_by, len(skipped))
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


def _unlink(paths: Iterable[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
