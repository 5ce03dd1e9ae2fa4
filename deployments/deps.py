"""FastAPI dependencies: the services object and the authenticated user."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer

from deployments.services import Services, current
from lumen.errors import Forbidden, Unauthorized

AUTH_ERRORS: dict[int | str, dict[str, str]] = {
    401: {"description": "missing, expired or forged token"},
    400: {"description": "a parameter is malformed or out of range (the detail says which)"},
}

_bearer = OAuth2PasswordBearer(tokenUrl="/login", auto_error=False)


def get_services() -> Services:
    services = current()
    services.start_keeper()
    return services


Svc = Annotated[Services, Depends(get_services)]


async def get_current_user(svc: Svc, token: Annotated[str | None, Depends(_bearer)]) -> str:
    if not token:
        raise Unauthorized("not authenticated: send 'Authorization: Bearer <token>'")
    return await asyncio.to_thread(svc.auth.verify, token)


async def get_stream_user(
    request: Request, svc: Svc, bearer: Annotated[str | None, Depends(_bearer)]
) -> str:
    """For SSE and <img> routes: a browser's EventSource cannot send headers, so `?token=`."""
    token = bearer or request.query_params.get("token")
    if not token:
        raise Unauthorized("not authenticated: send a bearer token or ?token=")
    return await asyncio.to_thread(svc.auth.verify, token)


CurrentUser = Annotated[str, Depends(get_current_user)]
StreamUser = Annotated[str, Depends(get_stream_user)]


async def get_admin(user: CurrentUser, svc: Svc) -> str:
    if not svc.auth.is_admin(user):
        raise Forbidden("only operators listed in LUMEN_AUTH__ADMIN_USERS may do this")
    return user


AdminUser = Annotated[str, Depends(get_admin)]
