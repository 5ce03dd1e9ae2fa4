"""`POST /signup` (JSON) and `POST /login` (form data)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form
from pydantic import BaseModel

from deployments.deps import AUTH_ERRORS, Client, CurrentUser, Svc, bearer_token
from deployments.schemas import MessageResponse, StreamTicketResponse, TokenResponse

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
    await svc.executors.password.run(svc.auth.signup, body.username, body.password, client)
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
    token = await svc.executors.password.run(svc.auth.login, username, password, client)
    return TokenResponse(access_token=token)


@router.post("/stream-ticket", response_model=StreamTicketResponse, responses=AUTH_ERRORS)
async def stream_ticket(user: CurrentUser, token: bearer_token, svc: Svc) -> StreamTicketResponse:
    """A short-lived ticket for `?ticket=` on the event streams (`/status`, `/monitor/...`).

    Browsers' EventSource cannot send headers; the ticket opens streams and nothing else, so
    the bearer token never has to go into a URL.
    """
    ticket = await svc.executors.blocking.run(svc.auth.issue_stream_ticket, token)
    return StreamTicketResponse(ticket=ticket, expires_in=svc.settings.auth.stream_ticket_ttl_s)
