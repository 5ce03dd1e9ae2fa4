"""Server-Sent Events: one JSON object per `data:` line, sent on change, with heartbeats."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi import Request
from fastapi.responses import StreamingResponse

from lumen.config import MonitorSettings

HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}


def sse_stream(
    request: Request,
    snapshot: Callable[[], Awaitable[object]],
    settings: MonitorSettings,
) -> StreamingResponse:
    """Stream `snapshot()` whenever it changes; a comment line keeps idle connections open."""

    async def events() -> AsyncIterator[str]:
        last: str | None = None
        last_sent = time.monotonic()
        yield "retry: 3000\n\n"
        while not await request.is_disconnected():
            payload = json.dumps(await snapshot(), separators=(",", ":"))
            now = time.monotonic()
            if payload != last:
                last, last_sent = payload, now
                yield f"data: {payload}\n\n"
            elif now - last_sent >= settings.sse_heartbeat_s:
                last_sent = now
                yield ": heartbeat\n\n"
            await asyncio.sleep(settings.sse_interval_s)

    return StreamingResponse(events(), media_type="text/event-stream", headers=HEADERS)
