"""Turning an uploaded ZIP or PDF into files in the user's folder and items in their queue."""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from lumen.config import Settings
from lumen.errors import InvalidUpload
from lumen.ingest.archive import extract_images
from lumen.ingest.pdf import render_pdf, sniff_pdf
from lumen.paths import relative_item, user_root
from lumen.storage import Stores
from lumen.storage.queue import NewItem

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


@dataclass
class UploadOutcome:
    message: str
    queued: list[str]
    duplicates: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"message": self.message, "queued": self.queued}
        out["duplicates"] = self.duplicates
        out["skipped"] = self.skipped
        return out


def _doc_stem(filename: str | None) -> str:
    stem = Path(filename or "document.pdf").stem
    stem = re.sub(r"[^\w\-.]+", "_", stem, flags=re.UNICODE).strip("._") or "document"
    return stem[:80]


class UploadService:
    """Extracts into the user's folder, dedupes by content and enqueues atomically."""

    def __init__(self, settings: Settings, stores: Stores) -> None:
        self.settings = settings
        self.stores = stores

    def folder(self, user: str, *sub: str) -> Path:
        path = user_root(self.settings.data_dir, user).joinpath(*sub)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def ingest_zip(self, user: str, archive: Path | BinaryIO) -> UploadOutcome:
        """Extract a ZIP (a path or a seekable binary file) into the user's folder, queue it."""
        result = extract_images(archive, self.folder(user), self.settings.limits)
        items = [
            NewItem(
                item=relative_item(self.settings.data_dir, user, img.path),
                sha256=img.sha256,
                meta={"kind": "image", "original": img.original_name, "format": str(img.format)},
            )
            for img in result.images
        ]
        outcome = self._enqueue(user, items)
        outcome.skipped = {s.name: s.reason for s in result.skipped}
        outcome.message = f"Uploaded and queued {len(outcome.queued)} images."
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
        doc = _doc_stem(filename)
        pages = render_pdf(path, self.folder(user, "pdfs"), doc, self.settings.limits)
        items = [
            NewItem(
                item=relative_item(self.settings.data_dir, user, page.path),
                sha256=page.sha256,
                meta={"kind": "pdf_page", "doc": doc, "page": page.page_number},
                text=page.text,
            )
            for page in pages
        ]
        outcome = self._enqueue(user, items)
        outcome.message = f"Processed {len(pages)} pages from PDF."
        return outcome

    def _enqueue(self, user: str, items: list[NewItem]) -> UploadOutcome:
        result = self.stores.queue.enqueue(user, items)
        for dup in result.duplicates:  # the same content is already in the space
            path = self.settings.data_dir / dup
            path.unlink(missing_ok=True)
        return UploadOutcome("", result.queued, result.duplicates)

    def remove_user_files(self, user: str) -> None:
        shutil.rmtree(user_root(self.settings.data_dir, user), ignore_errors=True)

    def remove_file(self, user: str, item: str) -> None:
        from lumen.paths import resolve_item

        resolve_item(self.settings.data_dir, user, item).unlink(missing_ok=True)
