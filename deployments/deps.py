"""FastAPI dependencies: the replica's services and the authenticated user."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.security import OAuth2PasswordBearer
from ray import serve

from deployments.services import Services
from lumen.auth import StreamGrant, client_address
from lumen.errors import Forbidden, Unauthorized

AUTH_ERRORS: dict[int | str, dict[str, str]] = {
    401: {"description": "missing, expired or forged token"},
    400: {"description": "a parameter is malformed or out of range (the detail says which)"},
}

_bearer = OAuth2PasswordBearer(tokenUrl="/login", auto_error=False)


def services_of(app: FastAPI) -> Services:
    """The replica's services, kept on `app.state` (Serve runs a copy of the module's app,
    so the first request attaches the services of the replica serving it)."""
    services: Services | None = getattr(app.state, "services", None)
    if services is None:
        services = serve.get_replica_context().servable_object.services  # type: ignore[attr-defined]
        app.state.services = services
    return services


def get_services(request: Request) -> Services:
    return services_of(request.app)


Svc = Annotated[Services, Depends(get_services)]


def get_client(request: Request, svc: Svc) -> str:
    """The caller's address; `X-Forwarded-For` counts only from `auth.trusted_proxies`."""
    forwarded = ",".join(request.headers.getlist("x-forwarded-for")) or None
    peer = request.client.host if request.client else None
    return client_address(peer, forwarded, svc.settings.auth.trusted_proxies)


Client = Annotated[str, Depends(get_client)]


# Where the request gate leaves a bearer verdict it already reached: (Authorization, user).
VERIFIED = "lumen_verified_bearer"


async def get_current_user(
    request: Request, svc: Svc, token: Annotated[str | None, Depends(_bearer)]
) -> str:
    if not token:
        raise Unauthorized("not authenticated: send 'Authorization: Bearer <token>'")
    verified = getattr(request.state, VERIFIED, None)
    if verified is not None and verified[0] == request.headers.get("authorization"):
        return str(verified[1])
    return await svc.executors.blocking.run(svc.auth.verify, token)


async def get_stream_grant(
    request: Request, svc: Svc, bearer: Annotated[str | None, Depends(_bearer)]
) -> StreamGrant:
    """For SSE routes: the bearer header, or `?ticket=` from `POST /stream-ticket` (a
    browser's EventSource cannot send headers, and a bearer token never goes in a URL)."""
    token = bearer or request.query_params.get("ticket")
    if not token:
        raise Unauthorized("not authenticated: send a bearer token or ?ticket=")
    return await svc.executors.blocking.run(svc.auth.verify_stream, token)


CurrentUser = Annotated[str, Depends(get_current_user)]
bearer_token = Annotated[str, Depends(_bearer)]
MaybeBearer = Annotated[str | None, Depends(_bearer)]
StreamAuth = Annotated[StreamGrant, Depends(get_stream_grant)]


async def get_admin(user: CurrentUser, svc: Svc) -> str:
    if not svc.auth.is_admin(user):
        raise Forbidden("only operators listed in LUMEN_AUTH__ADMIN_USERS may do this")
    return user


AdminUser = Annotated[str, Depends(get_admin)]
