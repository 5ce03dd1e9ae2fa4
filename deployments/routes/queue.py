"""The caller's queue: `GET /status` (SSE), `GET /done`, `DELETE /queue/{item}`, `POST /reset`."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from deployments.deps import AUTH_ERRORS, CurrentUser, StreamUser, Svc
from deployments.sse import sse_stream
from lumen.errors import Conflict, NotFound

router = APIRouter(tags=["queue"], responses=AUTH_ERRORS)


@router.get("/status", response_class=StreamingResponse)
async def status(request: Request, user: StreamUser, svc: Svc) -> StreamingResponse:
    """Server-Sent Events: the caller's queue, processing, done, errors and retries on change.

    Auth: bearer header, or `?token=` for browsers' EventSource.
    """
    cap = svc.settings.limits.max_status_items

    async def snapshot() -> object:
        st = await asyncio.to_thread(svc.stores.queue.status, user, cap)
        return st.as_dict()

    return sse_stream(request, snapshot, svc.settings.monitor)


@router.get("/done")
async def done(user: CurrentUser, svc: Svc) -> dict[str, list[str]]:
    """Every processed item of the caller."""
    return {"done_images": await asyncio.to_thread(svc.stores.queue.done, user)}


@router.delete("/queue/{item:path}")
async def delete_queued(item: str, user: CurrentUser, svc: Svc) -> dict[str, str]:
    """Remove a waiting item from the caller's queue; it will never be embedded."""
    removed = await asyncio.to_thread(svc.stores.queue.delete_queued, user, item)
    if removed == 0:
        state = await asyncio.to_thread(svc.stores.queue.state_of, user, item)
        if state is None:
            raise NotFound(f"{item} is not in your queue")
        raise Conflict(f"{item} is {state}, not waiting; only queued items can be removed")
    await asyncio.to_thread(svc.uploads.remove_file, user, item)
    return {"message": f"Removed {removed} occurrence(s) of {item} from queue."}


@router.post("/reset")
async def reset(user: CurrentUser, svc: Svc) -> dict[str, str]:
    """Delete the caller's index, metadata, files and queue records; nobody else's."""
    await asyncio.to_thread(svc.stores.queue.reset, user)
    await svc.shard(user).drop.remote(user)
    await asyncio.to_thread(svc.uploads.remove_user_files, user)
    return {"message": f"Reset completed for user {user}."}
