"""Ingress: the FastAPI app served by Ray Serve; errors map to HTTP here and nowhere else."""

from __future__ import annotations

import asyncio
import logging
import time
from importlib import resources
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse
from ray import serve
from ray.exceptions import RayError
from redis.exceptions import RedisClusterException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deployments.bodies import in_blocks
from deployments.deps import VERIFIED, Svc, services_of
from deployments.routes import admin, auth, health, monitor, queue, search, uploads
from deployments.services import Services
from lumen import metrics
from lumen.auth import client_address
from lumen.config import Settings
from lumen.errors import LimitExceeded, LumenError, ServiceUnavailable, TooManyRequests
from lumen.storage import REDIS_ERRORS

log = logging.getLogger(__name__)


# Routes whose bodies carry files, and which must show a valid token before sending them.
UPLOAD_PATHS = frozenset({"/upload", "/upload/pdf"})
SEARCH_PATHS = frozenset({"/search", "/search/pdf"})
# Anonymous routes: an address they throttled is refused here until its Retry-After.
ANONYMOUS_PATHS = frozenset({"/login", "/signup"})


def body_limit(path: str, settings: Settings) -> tuple[int, str]:
    """The most bytes a request body to `path` may have, and the setting that says so."""
    limits, forms = settings.limits, settings.admission.max_form_bytes
    if path in UPLOAD_PATHS:
        return limits.max_upload_bytes + forms, "max_upload_bytes"
    if path in SEARCH_PATHS:
        return limits.max_search_image_bytes + forms, "max_search_image_bytes"
    return forms, "admission.max_form_bytes"


class RequestGate:
    """Before any body is read: the per-route size limit, and the token on file routes.

    A declared oversized body gets its 413 at once; an undeclared one is cut off when it
    crosses the limit while streaming in. An upload or search without a valid bearer token
    gets its 401 after its headers, so no anonymous byte is spooled to disk.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        services = services_of(scope["app"])
        path = scope["path"]
        limit, name = body_limit(path, services.settings)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _send_error(LimitExceeded(f"the body is larger than {limit} bytes", name), send)
            return
        if scope["method"] == "POST" and (path in UPLOAD_PATHS or path in SEARCH_PATHS):
            try:
                authorization = headers.get(b"authorization", b"").decode("latin-1")
                user = await services.verify_bearer(authorization)
                # the route's own check reuses this verdict instead of asking Redis again
                scope.setdefault("state", {})[VERIFIED] = (authorization, user)
            except LumenError as exc:
                await _send_error(exc, send)
                return
            except REDIS_ERRORS:  # outside the app's handlers: answer as they would
                log.warning("redis unavailable while checking a token", exc_info=True)
                await _send_error(ServiceUnavailable("storage is unavailable; retry shortly"), send)
                return
        if scope["method"] == "POST" and path in ANONYMOUS_PATHS:
            address = _client_of(scope, headers, services.settings)
            wait_s = services.penalties.wait_s(address, time.monotonic())
            if wait_s:
                message = f"too many attempts from your address; try again in {wait_s} s"
                await services.tarpit.hold()
                await _send_error(TooManyRequests(message, wait_s), send)
                return
            send = _noting_throttles(send, services, address)
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise LimitExceeded(f"the body is larger than {limit} bytes", name)
            return message

        # uploads are spooled to disk in large writes rather than one per proxy message
        await self.app(scope, in_blocks(limited) if path in UPLOAD_PATHS else limited, send)


def _client_of(scope: Scope, headers: dict[bytes, bytes], settings: Settings) -> str:
    peer = scope.get("client")
    forwarded = headers.get(b"x-forwarded-for", b"").decode("latin-1") or None
    return client_address(peer[0] if peer else None, forwarded, settings.auth.trusted_proxies)


def _noting_throttles(send: Send, services: Services, address: str) -> Send:
    """`send`, putting `address` in the penalty box when the route answers 429, and
    holding every failed answer a moment (a wrong password, a throttle, a full pool)."""

    async def noting(message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] >= 400:
            if message["status"] == 429:
                retry = dict(message.get("headers") or []).get(b"retry-after", b"")
                if retry.isdigit():
                    services.penalties.hold(address, int(retry), time.monotonic())
            await services.tarpit.hold()
        await send(message)

    return noting


async def _send_error(exc: LumenError, send: Send) -> None:
    response = _error_response(exc)
    await response({"type": "http"}, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


def _error_response(exc: LumenError) -> JSONResponse:
    metrics.http_errors().inc(tags={"status": str(exc.status), "code": exc.code})
    body: dict[str, Any] = {"detail": exc.message, "code": exc.code}
    headers = {}
    if isinstance(exc, LimitExceeded):
        body["limit"] = exc.limit
    retry_after = getattr(exc, "retry_after_s", None)
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return JSONResponse(body, status_code=exc.status, headers=headers)


app = FastAPI(
    title="Lumen image search",
    description="Upload photos and PDFs, search them by text or image. All routes except "
    "/signup, /login, /healthz, /readyz and the UI need `Authorization: Bearer <token>`.",
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


@app.exception_handler(RedisClusterException)  # a cluster with no reachable node
@app.exception_handler(redis.RedisError)
async def redis_error(_: Request, exc: Exception) -> JSONResponse:
    log.warning("redis unavailable: %r", exc)
    return JSONResponse(
        {"detail": "storage is unavailable; retry shortly", "code": "unavailable"},
        status_code=503,
        headers={"Retry-After": "5"},
    )


app.add_middleware(RequestGate)
app.add_middleware(  # outermost, so refusals from the gate carry CORS headers too
    CORSMiddleware,
    allow_origins=["*"],
    allow_credentials=False,
    allow_methods=["*"],
    allow_headers=["Authorization", "Content-Type"],
    expose_headers=["Retry-After"],
)

for _module in (auth, uploads, search, queue, monitor, health, admin):
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
