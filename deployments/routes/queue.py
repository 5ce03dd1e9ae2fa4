"""The caller's queue: `GET /status` (SSE), `GET /done`, `DELETE /queue/{item}`, `POST /reset`."""

from __future__ import annotations

import dataclasses

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from deployments.deps import AUTH_ERRORS, CurrentUser, StreamAuth, Svc
from deployments.schemas import DoneResponse, MessageResponse, RetryResponse
from deployments.sse import sse_stream
from lumen.readiness import pending_items, waiting_reason
from lumen.storage.reindex import UNFINISHED

router = APIRouter(tags=["queue"], responses=AUTH_ERRORS)


@router.get("/status", response_class=StreamingResponse)
async def status(request: Request, grant: StreamAuth, svc: Svc) -> StreamingResponse:
    """Server-Sent Events: the caller's queue, processing, done, errors and retries on change.

    Auth: bearer header, or `?ticket=` (from `POST /stream-ticket`) for browsers' EventSource.
    While items wait and no Embedder replica runs, `waiting_for_worker` says why; while the
    caller's space is being re-embedded after a model upgrade, `reindex` shows its progress.
    """

    async def snapshot() -> object:
        status = dataclasses.asdict(await svc.account.status(grant.user))
        if pending_items(status):  # an extra field, only while items wait for no worker
            reason = waiting_reason(status, await svc.readiness.embedder())
            if reason:
                status["waiting_for_worker"] = reason
        progress = await svc.executors.blocking.run(svc.stores.spaces.progress, grant.user)
        if progress is not None and progress["state"] in UNFINISHED:  # only while it runs
            status["reindex"] = progress
        return status

    return sse_stream(request, svc, grant, snapshot)


@router.get("/done", response_model=DoneResponse)
async def done(user: CurrentUser, svc: Svc) -> DoneResponse:
    """Every processed item of the caller."""
    return DoneResponse(done_images=await svc.account.done(user))


@router.post("/queue/retry-errors", response_model=RetryResponse)
async def retry_errors(user: CurrentUser, svc: Svc) -> RetryResponse:
    """Queue every failed item of the caller again, each with a fresh retry budget."""
    items = await svc.account.retry_all(user)
    if items:
        await svc.supervisor.kick(user)
    return RetryResponse(message=f"Requeued {len(items)} failed item(s).", requeued=items)


@router.post("/queue/{item:path}/retry", response_model=RetryResponse)
async def retry_item(item: str, user: CurrentUser, svc: Svc) -> RetryResponse:
    """Queue one failed item again with a fresh retry budget (409 if it has not failed)."""
    await svc.account.retry(user, item)
    await svc.supervisor.kick(user)
    return RetryResponse(message=f"Requeued {item}.", requeued=[item])


@router.delete("/queue/{item:path}", response_model=MessageResponse)
async def delete_queued(item: str, user: CurrentUser, svc: Svc) -> MessageResponse:
    """Remove a waiting or failed item (and its file); it will never be embedded."""
    removed = await svc.account.delete_queued(user, item)
    return MessageResponse(message=f"Removed {removed} occurrence(s) of {item} from queue.")


@router.post("/reset", response_model=MessageResponse)
async def reset(user: CurrentUser, svc: Svc) -> MessageResponse:
    """Delete the caller's index, metadata, files and queue records; nobody else's."""
    await svc.account.reset(user)
    return MessageResponse(message=f"Reset completed for user {user}.")
