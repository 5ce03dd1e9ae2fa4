"""Ingress: the FastAPI app served by Ray Serve; errors map to HTTP here and nowhere else."""

from __future__ import annotations

import asyncio
import logging
from importlib import resources
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse
from ray import serve
from ray.exceptions import RayError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deployments.deps import Svc, services_of
from deployments.routes import auth, monitor, queue, search, uploads
from deployments.services import Services
from lumen import metrics
from lumen.config import Settings
from lumen.errors import LimitExceeded, LumenError, TooManyRequests

log = logging.getLogger(__name__)


class BodyLimit:
    """Refuse request bodies over the upload limit while they stream in (413 naming it)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = services_of(scope["app"]).settings.limits.max_upload_bytes + 1024**2
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _too_large(limit, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise LimitExceeded(f"upload is larger than {limit} bytes", "max_upload_bytes")
            return message

        await self.app(scope, limited, send)


async def _too_large(limit: int, send: Send) -> None:
    exc = LimitExceeded(f"upload is larger than {limit} bytes", "max_upload_bytes")
    response = _error_response(exc)
    await response({"type": "http"}, _no_body, send)  # type: ignore[arg-type]


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


def _error_response(exc: LumenError) -> JSONResponse:
    metrics.http_errors().inc(tags={"status": str(exc.status), "code": exc.code})
    body: dict[str, Any] = {"detail": exc.message, "code": exc.code}
    headers = {}
    if isinstance(exc, LimitExceeded):
        body["limit"] = exc.limit
    if isinstance(exc, TooManyRequests):
        headers["Retry-After"] = str(exc.retry_after_s)
    return JSONResponse(body, status_code=exc.status, headers=headers)


app = FastAPI(
    title="Lumen image search",
    description="Upload photos and PDFs, search them by text or image. All routes except "
    "/signup, /login, /healthz and the UI need `Authorization: Bearer <token>`.",
    version="0.1.0",
)


@app.exception_handler(LumenError)
async def lumen_error(_: Request, exc: LumenError) -> JSONResponse:
    return _error_response(exc)


@app.exception_handler(RayError)
async def ray_error(_: Request, exc: RayError) -> JSONResponse:
    cause = getattr(exc, "cause", None)
    if isinstance(cause, LumenError):
        return _error_response(cause)
    log.warning("ray error at a handle boundary: %r", exc)
    return JSONResponse(
        {"detail": "a worker is restarting; retry in a few seconds", "code": "unavailable"},
        status_code=503,
        headers={"Retry-After": "5"},
    )


@app.exception_handler(redis.RedisError)
async def redis_error(_: Request, exc: redis.RedisError) -> JSONResponse:
    log.warning("redis unavailable: %r", exc)
    return JSONResponse(
        {"detail": "storage is unavailable; retry shortly", "code": "unavailable"},
        status_code=503,
        headers={"Retry-After": "5"},
    )


app.add_middleware(
    CORSMiddleware,
    allow_origins=["*"],
    allow_credentials=False,
    allow_methods=["*"],
    allow_headers=["Authorization", "Content-Type"],
)
app.add_middleware(BodyLimit)

for _module in (auth, uploads, search, queue, monitor):
    app.include_router(_module.router)


@app.get("/healthz", tags=["system"])
async def healthz(svc: Svc) -> JSONResponse:
    """Liveness for load balancers and the run command. No token needed."""
    ok = await asyncio.to_thread(svc.stores.ping)
    return JSONResponse(
        {"status": "ok" if ok else "degraded", "redis": ok}, status_code=200 if ok else 503
    )


@app.get("/", include_in_schema=False)
async def ui() -> HTMLResponse:
    page = resources.files("lumen").joinpath("web/index.html").read_text(encoding="utf-8")
    return HTMLResponse(page)


@serve.deployment
@serve.ingress(app)
class Ingress:
    """Auth, validation, uploads and SSE; use cases run in the core services."""

    def __init__(self, settings: Settings, embedder: Any) -> None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.services = Services(settings, embedder)
        self.services.supervisor.ensure_started()

    async def check_health(self) -> None:
        """Serve calls this every few seconds: it also keeps the background actors running."""
        self.services.supervisor.ensure_started()
