"""Accounts: username rules, Argon2 password hashes, HS256 tokens and login throttling."""

from __future__ import annotations

import re
import time

import jwt
from pwdlib import PasswordHash

from lumen.config import AuthSettings
from lumen.errors import BadRequest, Conflict, TooManyRequests, Unauthorized
from lumen.storage import UserStore

USERNAME_RE = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]{2,63}$")

_hasher = PasswordHash.recommended()
# Verifying against this keeps unknown-user logins as slow as wrong-password ones.
_DUMMY_HASH = _hasher.hash("lumen-timing-equaliser")


def validate_username(username: str) -> str:
    if not isinstance(username, str) or not USERNAME_RE.fullmatch(username):
        raise BadRequest(
            "username must be 3-64 characters of letters, digits, '_', '.', '-' "
            "and must not start with '.'"
        )
    return username


def validate_password(password: str, settings: AuthSettings) -> str:
    if not isinstance(password, str) or len(password) < settings.min_password_chars:
        raise BadRequest(f"password must be at least {settings.min_password_chars} characters")
    if len(password) > settings.max_password_chars:
        raise BadRequest(f"password must be at most {settings.max_password_chars} characters")
    return password


class Authenticator:
    """Signs up users, checks passwords and issues/verifies tokens."""

    def __init__(self, settings: AuthSettings, users: UserStore) -> None:
        if not settings.jwt_secret:
            raise ValueError("a JWT secret is required (LUMEN_AUTH__JWT_SECRET)")
        self._settings = settings
        self._secret = settings.jwt_secret
        self._users = users

    def signup(self, username: str, password: str) -> None:
        validate_username(username)
        validate_password(password, self._settings)
        if not self._users.create(username, _hasher.hash(password)):
            raise Conflict(f"username '{username}' is already taken")

    def login(self, username: str, password: str) -> str:
        s = self._settings
        failures, wait_s = self._users.failures(username)
        if failures >= s.login_max_failures:
            raise TooManyRequests(
                f"too many failed logins for this user; try again in {wait_s} s", wait_s
            )
        stored = self._users.password_hash(username) if USERNAME_RE.fullmatch(username) else None
        valid, new_hash = _hasher.verify_and_update(password, stored or _DUMMY_HASH)
        if stored is None or not valid:
            self._users.record_failure(username, s.login_window_s)
            raise Unauthorized("incorrect username or password")
        if new_hash:
            self._users.set_password_hash(username, new_hash)
        self._users.clear_failures(username)
        return self.issue(username)

    def issue(self, username: str) -> str:
        now = int(time.time())
        claims = {"sub": username, "iat": now, "exp": now + self._settings.token_ttl_s}
        return jwt.encode(claims, self._secret, algorithm=self._settings.jwt_algorithm)

    def verify(self, token: str) -> str:
        """Return the username a valid token names; 401 for anything else."""
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[self._settings.jwt_algorithm],
                options={"require": ["exp", "iat", "sub"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("token expired; log in again") from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized("invalid token") from exc
        username = claims.get("sub")
        if not isinstance(username, str) or not self._users.exists(username):
            raise Unauthorized("invalid token")
        return username

    def is_admin(self, username: str) -> bool:
        return username in self._settings.admin_users
