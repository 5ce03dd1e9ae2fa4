"""`GET /monitor/worker`, `GET /monitor/events` (SSE), `POST /monitor/events/reset`, and
the operators' `GET /monitor/shards`."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from deployments.deps import AUTH_ERRORS, AdminUser, StreamAuth, Svc
from deployments.schemas import MessageResponse, ShardsResponse
from deployments.sse import sse_stream
from lumen.events import visible_events

router = APIRouter(prefix="/monitor", tags=["monitor"], responses=AUTH_ERRORS)

SHARD_STATS_TIMEOUT_S = 2.0


@router.get("/worker", response_class=StreamingResponse)
async def workers(request: Request, grant: StreamAuth, svc: Svc) -> StreamingResponse:
    """SSE: every Embedder replica (`health`/`stale`/`starting`/`dead`/`stopped`) and metrics."""

    async def snapshot() -> object:
        return await svc.actors.monitor().workers.remote()

    return sse_stream(request, svc, grant, snapshot)


@router.get("/events", response_class=StreamingResponse)
async def events(request: Request, grant: StreamAuth, svc: Svc) -> StreamingResponse:
    """SSE: system events, newest first (the latest 100).

    Operators see every event; a plain user sees their own in full and the others without
    any user's name, items or reasons.
    """
    admin = svc.auth.is_admin(grant.user)

    async def snapshot() -> object:
        events = await svc.executors.blocking.run(svc.stores.events.list, 100)
        return visible_events(events, grant.user, admin)

    return sse_stream(request, svc, grant, snapshot)


@router.post("/events/reset", response_model=MessageResponse)
async def reset_events(user: AdminUser, svc: Svc) -> MessageResponse:
    """Clear the event log. Operators only (LUMEN_AUTH__ADMIN_USERS)."""
    await asyncio.to_thread(svc.stores.events.reset)
    return MessageResponse(message="Monitor events reset successfully.")


@router.get("/shards", response_model=ShardsResponse)
async def shards(user: AdminUser, svc: Svc) -> ShardsResponse:
    """Each IndexShard's memory against its budget, its spaces and evictions, and its largest
    users' spaces. Operators only (LUMEN_AUTH__ADMIN_USERS)."""
    return ShardsResponse(shards=await svc.actors.shard_stats(SHARD_STATS_TIMEOUT_S))
