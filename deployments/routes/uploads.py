"""`POST /upload` (a ZIP of images) and `POST /upload/pdf` (a PDF, or a ZIP of images)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, BinaryIO

from fastapi import APIRouter, File, UploadFile

from deployments.deps import AUTH_ERRORS, CurrentUser, Svc
from deployments.schemas import UploadResponse, UsageResponse
from deployments.services import Services
from lumen.admission import Work
from lumen.errors import BadRequest, LimitExceeded
from lumen.executors import BoundedExecutor
from lumen.uploads import ChunkHook

router = APIRouter(tags=["uploads"], responses=AUTH_ERRORS)

_ERRORS: dict[int | str, dict[str, str]] = {
    400: {"description": "not a readable ZIP/PDF, encrypted, corrupt or empty"},
    401: {"description": "missing or bad token"},
    413: {"description": "over a configured limit (the body names it)"},
}


def _checked(svc: Svc, upload: UploadFile) -> BinaryIO:
    """The upload's own spooled file (Starlette keeps big ones on disk), size-checked."""
    limit = svc.settings.limits.max_upload_bytes
    handle = upload.file
    size = handle.seek(0, os.SEEK_END)
    if size > limit:
        raise LimitExceeded(f"upload is larger than {limit} bytes", "max_upload_bytes")
    if size == 0:
        raise BadRequest("the uploaded file is empty")
    handle.seek(0)
    return handle


@contextlib.contextmanager
def _on_disk(svc: Svc, handle: BinaryIO) -> Iterator[Path]:
    """A named copy for work in another process (PDF rendering); always removed."""
    tmp_dir = svc.settings.data_dir / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=tmp_dir, suffix=".upload")
    path = Path(name)
    try:
        with open(fd, "wb") as out:
            shutil.copyfileobj(handle, out, 1024 * 1024)
        yield path
    finally:
        path.unlink(missing_ok=True)


@router.post("/upload", responses=_ERRORS, response_model=UploadResponse)
async def upload_zip(
    zip_file: Annotated[UploadFile, File(description="ZIP of .jpg/.jpeg/.png/.heic images")],
    user: CurrentUser,
    svc: Svc,
) -> UploadResponse:
    """Extract a ZIP of images into the caller's folder and queue each new image."""

    def work(on_chunk: ChunkHook) -> object:
        return svc.uploads.ingest_zip(user, _checked(svc, zip_file), on_chunk)

    return await _admitted(svc, user, work, svc.executors.blocking)


@router.post("/upload/pdf", responses=_ERRORS, response_model=UploadResponse)
async def upload_pdf(
    upload_file: Annotated[UploadFile, File(description="a PDF, or a ZIP of images")],
    user: CurrentUser,
    svc: Svc,
) -> UploadResponse:
    """Render a PDF's pages (or extract a ZIP's images) and queue them."""

    def work(on_chunk: ChunkHook) -> object:
        handle = _checked(svc, upload_file)
        if svc.uploads.is_zip(handle):
            return svc.uploads.ingest_zip(user, handle, on_chunk)
        with _on_disk(svc, handle) as path:
            return svc.uploads.ingest_pdf(user, path, upload_file.filename, on_chunk)

    return await _admitted(svc, user, work, svc.executors.pdf)


async def _admitted(
    svc: Services, user: str, work: Callable[[ChunkHook], object], pool: BoundedExecutor
) -> UploadResponse:
    """Run an upload within the user's upload slots on `pool`; each chunk it queues wakes
    the dispatcher (embedding starts while the archive is still being extracted)."""
    loop = asyncio.get_running_loop()

    def on_chunk(_: list[str]) -> None:  # on the upload's thread
        loop.call_soon_threadsafe(svc.supervisor.kick_soon, user)

    with svc.admission.admit(Work.UPLOAD, user):
        out = await pool.run(work, on_chunk)
    await svc.supervisor.kick(user)
    return UploadResponse.model_validate(out, from_attributes=True)


@router.get("/usage", response_model=UsageResponse)
async def usage(user: CurrentUser, svc: Svc) -> UsageResponse:
    """Bytes and items the caller stores, against their quota (0 = unlimited)."""
    report = await svc.executors.blocking.run(svc.uploads.usage, user)
    return UsageResponse.model_validate(report, from_attributes=True)
