"""Accounts: username rules, Argon2 hashes, bearer tokens, stream tickets and login throttling.

Throttling counts attempts per client address and per (username, client address), never per
username alone, so failures sent from elsewhere never lock an account's owner out. Attempts
are counted before the password is checked (so concurrent guesses cannot all slip past the
limit), and a successful login gives its attempt back. IPv6 clients are counted per /64.

Credentials, all HS256 JWTs signed with `auth.jwt_secret`:

- bearer tokens (`typ: access`) from `login`: every route accepts them until `exp`; a reset
  of the account does not end them (spec clients keep their token).
- stream tickets (`typ: stream`, `aud: lumen:stream`) from `issue_stream_ticket`: only the
  event-stream routes accept them (a browser's EventSource cannot send a header, and the
  bearer token must never sit in a URL). A ticket must be used within
  `auth.stream_ticket_ttl_s`; the stream it opens lasts as long as the bearer token it was
  issued for.
- a stream, however opened, ends when its credential expires or the account is reset (the
  account's `epoch` moves on): streams re-check with `still_valid`.

Usernames and passwords are validated before anything reaches the store, so no oversized or
malformed name ever becomes a Redis key.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

import jwt
from pwdlib import PasswordHash

from lumen.config import AuthSettings
from lumen.errors import (
    BadRequest,
    Conflict,
    SignupClosed,
    TooManyRequests,
    Unauthorized,
)

MAX_USERNAME_CHARS = 64
USERNAME_RE = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]{2,63}$")
STREAM_AUDIENCE = "lumen:stream"
# A JWT this server issues is a few hundred characters; anything far longer is not one.
_MAX_TOKEN_CHARS = 4096
# X-Forwarded-For hops looked at, right to left.
_MAX_HOPS = 32

DEFAULT_HASHER = PasswordHash.recommended()

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class UserStore(Protocol):
    """What the Authenticator needs from storage (`lumen.storage.UserStore` in Redis)."""

    def create(self, username: str, password_hash: str) -> bool:
        """Create the account; False when the name is taken."""
        ...

    def exists(self, username: str) -> bool: ...

    def password_hash(self, username: str) -> str | None: ...

    def set_password_hash(self, username: str, password_hash: str) -> None: ...

    def epoch(self, username: str) -> int | None:
        """How many times the account was reset; None when there is no such account."""
        ...

    def bump_epoch(self, username: str) -> int | None:
        """Count a reset; the new epoch, or None when there is no such account."""
        ...

    def count_attempt(self, subject: str, window_s: int) -> tuple[int, int]:
        """Count one attempt; (attempts in the window, seconds until the window ends)."""
        ...

    def forget_attempt(self, subject: str) -> None:
        """Undo one counted attempt, if its window is still open."""
        ...

    def clear_attempts(self, subject: str) -> None: ...


@dataclass(frozen=True)
class StreamGrant:
    """Who may read an event stream, until when, and the account epoch it was opened in."""

    user: str
    epoch: int
    expires_at: int


# --- client addresses -----------------------------------------------------------------------


def client_address(
    peer_host: str | None, forwarded_for: str | None, trusted_proxies: Sequence[str]
) -> str:
    """The address to count a request against.

    `X-Forwarded-For` is believed only when the TCP peer is one of `trusted_proxies` (IPs or
    CIDRs); then the right-most hop that is not a trusted proxy is the client. Join repeated
    headers with ',' before passing them. Anything else is the peer itself.
    """
    peer = _parse_ip(peer_host)
    if peer is None:
        return (peer_host or "unknown")[:MAX_USERNAME_CHARS]
    networks = _networks(tuple(trusted_proxies))
    if not forwarded_for or not _is_trusted(peer, networks):
        return str(peer)
    nearest = peer
    for hop in reversed(forwarded_for.split(",")[-_MAX_HOPS:]):
        ip = _parse_ip(hop)
        if ip is None:  # a trusted proxy passed on garbage: the last address we can vouch for
            return str(nearest)
        if not _is_trusted(ip, networks):
            return str(ip)
        nearest = ip
    return str(nearest)


def address_subject(address: str) -> str:
    """The throttling subject for an address: IPv6 per /64 (one host's usual share)."""
    ip = _parse_ip(address)
    if ip is None:
        return re.sub(r"[^A-Za-z0-9.:_\-]", "_", address)[:MAX_USERNAME_CHARS] or "unknown"
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def _parse_ip(value: str | None) -> IPAddress | None:
    """An IP from `1.2.3.4`, `1.2.3.4:80`, `::1`, `[::1]:80`; IPv4-mapped IPv6 as IPv4."""
    if not value:
        return None
    text = value.strip().strip('"')
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@lru_cache(maxsize=16)
def _networks(entries: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(e, strict=False) for e in entries)


def _is_trusted(ip: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    return any(ip.version == net.version and ip in net for net in networks)


# --- accounts -------------------------------------------------------------------------------


def validate_username(username: str) -> str:
    if (
        not isinstance(username, str)
        or len(username) > MAX_USERNAME_CHARS
        or not USERNAME_RE.fullmatch(username)
    ):
        raise BadRequest(
            "username must be 3-64 characters of letters, digits, '_', '.', '-' "
            "and must not start with '.'"
        )
    return username


def validate_password(password: str, settings: AuthSettings) -> str:
    _check_password_size(password, settings)
    if len(password) < settings.min_password_chars:
        raise BadRequest(f"password must be at least {settings.min_password_chars} characters")
    return password


def _check_password_size(password: str, settings: AuthSettings) -> None:
    # Login checks only the upper bound: a password set under an older, lower minimum works.
    if not isinstance(password, str):
        raise BadRequest("password must be a string")
    if len(password) > settings.max_password_chars:
        raise BadRequest(f"password must be at most {settings.max_password_chars} characters")


def create_account(
    users: UserStore,
    settings: AuthSettings,
    username: str,
    password: str,
    hasher: PasswordHash = DEFAULT_HASHER,
) -> None:
    """Validate, hash and store a new account; Conflict when the name is taken.

    No throttling and no `public_signup` check: this is the operator's path
    (`lumen admin create-user`) and the last step of a public signup.
    """
    validate_username(username)
    validate_password(password, settings)
    if not users.create(username, hasher.hash(password)):
        raise Conflict(f"username '{username}' is already taken")


class Authenticator:
    """Signs users up, checks passwords, and issues and verifies tokens and stream tickets."""

    def __init__(
        self,
        settings: AuthSettings,
        users: UserStore,
        clock: Callable[[], float] = time.time,
        hasher: PasswordHash = DEFAULT_HASHER,
    ) -> None:
        if not settings.jwt_secret:
            raise ValueError("a JWT secret is required (LUMEN_AUTH__JWT_SECRET)")
        self._settings = settings
        self._secret = settings.jwt_secret
        self._users = users
        self._clock = clock
        self._hasher = hasher
        # Verifying against this keeps unknown-user logins as slow as wrong-password ones.
        self._dummy_hash = hasher.hash("lumen-timing-equaliser")

    # --- signup and login ---------------------------------------------------------------

    def signup(self, username: str, password: str, client: str) -> None:
        """Create an account for a client at address `client` (see `client_address`)."""
        s = self._settings
        if not s.public_signup:
            raise SignupClosed(
                "public signup is closed on this server; an operator creates accounts with "
                "`lumen admin create-user USERNAME`"
            )
        validate_username(username)
        validate_password(password, s)
        # Every attempt counts, taken names too: that also slows probing for usernames.
        count, wait_s = self._users.count_attempt(
            f"signup-addr:{address_subject(client)}", s.signup_window_s
        )
        if count > s.signup_per_address:
            raise TooManyRequests(
                f"too many signups from your address; try again in {wait_s} s", max(wait_s, 1)
            )
        create_account(self._users, s, username, password, self._hasher)

    def login(self, username: str, password: str, client: str) -> str:
        """A bearer token for the right password; 401 otherwise, 429 when throttled."""
        s = self._settings
        validate_username(username)
        _check_password_size(password, s)
        subject = address_subject(client)
        by_address = f"login-addr:{subject}"
        by_pair = f"login-user:{username}|{subject}"
        count, wait_s = self._users.count_attempt(by_address, s.login_window_s)
        if count > s.login_max_failures_per_address:
            raise TooManyRequests(
                f"too many failed logins from your address; try again in {wait_s} s",
                max(wait_s, 1),
            )
        count, wait_s = self._users.count_attempt(by_pair, s.login_window_s)
        if count > s.login_max_failures:
            # No password was tried, so this refusal does not count against the address.
            self._users.forget_attempt(by_address)
            raise TooManyRequests(
                f"too many failed logins for this account from your address; "
                f"try again in {wait_s} s",
                max(wait_s, 1),
            )
        stored = self._users.password_hash(username)
        valid, new_hash = self._hasher.verify_and_update(password, stored or self._dummy_hash)
        if stored is None or not valid:
            raise Unauthorized("incorrect username or password")
        if new_hash:
            self._users.set_password_hash(username, new_hash)
        self._users.clear_attempts(by_pair)
        self._users.forget_attempt(by_address)
        return self.issue(username)

    def is_admin(self, username: str) -> bool:
        return username in self._settings.admin_users

    # --- bearer tokens ------------------------------------------------------------------

    def issue(self, username: str) -> str:
        now = int(self._clock())
        claims = {
            "sub": username,
            "iat": now,
            "exp": now + self._settings.token_ttl_s,
            "typ": "access",
        }
        return jwt.encode(claims, self._secret, algorithm=self._settings.jwt_algorithm)

    def verify(self, token: str) -> str:
        """The username a valid bearer token names; 401 for anything else, tickets included."""
        claims = self._decode(token)
        if _is_ticket(claims):
            raise Unauthorized(
                "a stream ticket only opens event streams; send 'Authorization: Bearer <token>'"
            )
        return self._existing(claims["sub"])

    # --- event streams ------------------------------------------------------------------

    def issue_stream_ticket(self, bearer: str) -> str:
        """A short-lived ticket for `?ticket=` on stream routes, from a valid bearer token.

        It must be used within `auth.stream_ticket_ttl_s` and stops working when the account
        is reset; the stream it opens may last until the bearer token's own expiry.
        """
        claims = self._decode(bearer)
        if _is_ticket(claims):
            raise Unauthorized("a stream ticket cannot issue another; send your bearer token")
        user = claims["sub"]
        epoch = self._epoch(user)
        now = int(self._clock())
        session_exp = int(claims["exp"])
        ticket = {
            "sub": user,
            "iat": now,
            "exp": min(now + self._settings.stream_ticket_ttl_s, session_exp),
            "typ": "stream",
            "aud": STREAM_AUDIENCE,
            "ep": epoch,
            "sexp": session_exp,
        }
        return jwt.encode(ticket, self._secret, algorithm=self._settings.jwt_algorithm)

    def verify_stream(self, token: str) -> StreamGrant:
        """Admit a stream with a ticket or a bearer token; 401 for anything else."""
        claims = self._decode(token)
        user = claims["sub"]
        epoch = self._epoch(user)
        if not _is_ticket(claims):
            return StreamGrant(user=user, epoch=epoch, expires_at=int(claims["exp"]))
        if claims.get("aud") != STREAM_AUDIENCE or not isinstance(claims.get("sexp"), int):
            raise Unauthorized("invalid stream ticket")
        if claims.get("ep") != epoch:
            raise Unauthorized("this stream ticket predates a reset of the account; get a new one")
        return StreamGrant(user=user, epoch=epoch, expires_at=claims["sexp"])

    def still_valid(self, grant: StreamGrant) -> bool:
        """False once the stream's credential expired or the account was reset or deleted."""
        if self._clock() >= grant.expires_at:
            return False
        return self._users.epoch(grant.user) == grant.epoch

    def revoke_streams(self, username: str) -> None:
        """End every open stream of the account and void its unused tickets (on reset)."""
        self._users.bump_epoch(username)

    # --- helpers ------------------------------------------------------------------------

    def _decode(self, token: str) -> dict[str, Any]:
        """Verified claims with a string `sub` and numeric, unexpired `exp`; else 401."""
        if not isinstance(token, str) or not token or len(token) > _MAX_TOKEN_CHARS:
            raise Unauthorized("invalid token")
        try:
            # Expiry is checked below against our own clock; audience by `_is_ticket` callers.
            claims: dict[str, Any] = jwt.decode(
                token,
                self._secret,
                algorithms=[self._settings.jwt_algorithm],
                options={
                    "require": ["exp", "iat", "sub"],
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_aud": False,
                },
            )
        except jwt.PyJWTError as exc:
            raise Unauthorized("invalid token") from exc
        exp = claims.get("exp")
        if not isinstance(claims.get("sub"), str) or not isinstance(exp, int | float):
            raise Unauthorized("invalid token")
        if self._clock() >= exp:
            raise Unauthorized("token expired; log in again")
        typ = claims.get("typ")
        if typ not in (None, "access", "stream") or (typ != "stream" and "aud" in claims):
            raise Unauthorized("invalid token")
        return claims

    def _existing(self, user: str) -> str:
        if not self._users.exists(user):
            raise Unauthorized("invalid token")
        return user

    def _epoch(self, user: str) -> int:
        epoch = self._users.epoch(user)
        if epoch is None:
            raise Unauthorized("invalid token")
        return epoch


def _is_ticket(claims: dict[str, Any]) -> bool:
    return claims.get("typ") == "stream"
