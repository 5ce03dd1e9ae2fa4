"""Server-Sent Events: one JSON object per `data:` line, sent on change, with heartbeats.

Each stream holds one admission slot for its whole life and re-checks its credential every
`admission.stream_recheck_s`: it ends when the token expires or the account is reset.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from deployments.services import Services
from lumen.admission import Work
from lumen.auth import StreamGrant

log = logging.getLogger(__name__)

HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}


class _Slot:
    """One admitted stream; released once, whichever way the response ends."""

    def __init__(self, svc: Services, user: str) -> None:
        self.held = False
        svc.admission.acquire(Work.STREAM, user)
        self.svc, self.user, self.held = svc, user, True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.svc.admission.release(Work.STREAM, self.user)

    def __del__(self) -> None:  # a response cancelled before its body started
        self.release()


def sse_stream(
    request: Request, svc: Services, grant: StreamGrant, snapshot: Callable[[], Awaitable[object]]
) -> StreamingResponse:
    """Stream `snapshot()` whenever it changes; a comment line keeps idle connections open.

    Raises a 429 at once when the user (or the server) has as many streams as allowed.
    """
    slot = _Slot(svc, grant.user)
    monitor, recheck_s = svc.settings.monitor, svc.settings.admission.stream_recheck_s

    async def still_valid() -> bool:
        return bool(await svc.executors.blocking.run(svc.auth.still_valid, grant))

    async def events() -> AsyncIterator[str]:
        try:
            last: str | None = None
            last_sent = last_check = time.monotonic()
            yield "retry: 3000\n\n"
            while not await request.is_disconnected():
                now = time.monotonic()
                if now - last_check >= recheck_s:
                    last_check = now
                    if not await still_valid():
                        yield 'event: end\ndata: {"reason":"credential expired or revoked"}\n\n'
                        return
                payload = json.dumps(await snapshot(), separators=(",", ":"))
                if payload != last:
                    last, last_sent = payload, now
                    yield f"data: {payload}\n\n"
                elif now - last_sent >= monitor.sse_heartbeat_s:
                    last_sent = now
                    yield ": heartbeat\n\n"
                await asyncio.sleep(monitor.sse_interval_s)
        except Exception:  # noqa: BLE001 - the response has started: end the stream cleanly
            log.warning("event stream for %s ended by an error", grant.user, exc_info=True)
            yield 'event: end\ndata: {"reason":"the server could not read this stream"}\n\n'
        finally:
            slot.release()

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers=HEADERS,
        background=BackgroundTask(slot.release),
    )
