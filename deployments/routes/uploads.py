"""`POST /upload` (a ZIP of images) and `POST /upload/pdf` (a PDF, or a ZIP of images)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, UploadFile

from deployments.deps import AUTH_ERRORS, CurrentUser, Svc
from lumen.errors import BadRequest, LimitExceeded

router = APIRouter(tags=["uploads"], responses=AUTH_ERRORS)

_ERRORS: dict[int | str, dict[str, str]] = {
    400: {"description": "not a readable ZIP/PDF, encrypted, corrupt or empty"},
    401: {"description": "missing or bad token"},
    413: {"description": "over a configured limit (the body names it)"},
}


@contextlib.contextmanager
def _spooled_to_disk(svc: Svc, upload: UploadFile):  # type: ignore[no-untyped-def]
    """Copy the upload to a private temp file in the data dir, in chunks; always removed."""
    limit = svc.settings.limits.max_upload_bytes
    tmp_dir = svc.settings.data_dir / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=tmp_dir, suffix=".upload")
    path = Path(name)
    try:
        with open(fd, "wb") as out:
            upload.file.seek(0)
            shutil.copyfileobj(upload.file, out, 1024 * 1024)
            if out.tell() > limit:
                raise LimitExceeded(f"upload is larger than {limit} bytes", "max_upload_bytes")
            if out.tell() == 0:
                raise BadRequest("the uploaded file is empty")
        yield path
    finally:
        path.unlink(missing_ok=True)


@router.post("/upload", responses=_ERRORS)
async def upload_zip(
    zip_file: Annotated[UploadFile, File(description="ZIP of .jpg/.jpeg/.png/.heic images")],
    user: CurrentUser,
    svc: Svc,
) -> dict[str, object]:
    """Extract a ZIP of images into the caller's folder and queue each new image."""

    def work() -> dict[str, object]:
        with _spooled_to_disk(svc, zip_file) as path:
            return svc.uploads.ingest_zip(user, path).as_dict()

    out = await asyncio.to_thread(work)
    await svc.kick()
    return out


@router.post("/upload/pdf", responses=_ERRORS)
async def upload_pdf(
    upload_file: Annotated[UploadFile, File(description="a PDF, or a ZIP of images")],
    user: CurrentUser,
    svc: Svc,
) -> dict[str, object]:
    """Render a PDF's pages (or extract a ZIP's images) and queue them."""

    def work() -> dict[str, object]:
        with _spooled_to_disk(svc, upload_file) as path:
            return svc.uploads.ingest_pdf_or_zip(user, path, upload_file.filename).as_dict()

    out = await asyncio.to_thread(work)
    await svc.kick()
    return out
