"""`POST /signup` (JSON) and `POST /login` (form data)."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Form
from pydantic import BaseModel

from deployments.deps import Client, Svc
from deployments.schemas import MessageResponse, TokenResponse

router = APIRouter(tags=["auth"])


class SignupRequest(BaseModel):
    username: str
    password: str


@router.post(
    "/signup",
    response_model=MessageResponse,
    responses={400: {"description": "bad username or password"}, 409: {"description": "taken"}},
)
async def signup(body: SignupRequest, svc: Svc, client: Client) -> MessageResponse:
    """Create an account. No token needed."""
    await asyncio.to_thread(svc.auth.signup, body.username, body.password, client)
    return MessageResponse(message="Signup successful")


@router.post(
    "/login",
    response_model=TokenResponse,
    responses={401: {"description": "wrong credentials"}, 429: {"description": "throttled"}},
)
async def login(
    username: Annotated[str, Form()], password: Annotated[str, Form()], svc: Svc, client: Client
) -> TokenResponse:
    """Exchange username and password (form data) for a bearer token."""
    token = await asyncio.to_thread(svc.auth.login, username, password, client)
    return TokenResponse(access_token=token)
