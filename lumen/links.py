"""Signed image links: expiring URLs that name one image of one user and are no credential.

A link looks like `/image/uploads/ann/a.jpg?u=ann&exp=1700003600&sig=...`: an HMAC-SHA256 over
(user, item, exp) with a key derived from the JWT secret under its own context, so a link's
signature is never a token and a token is never a link. It opens that one image until `exp`
and nothing else. Expiries are rounded up to a whole `granularity_s`, so the same image gets
the same URL for a while and browsers can cache it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import time
from collections.abc import Callable, Mapping
from urllib.parse import quote, urlencode

from lumen.config import AuthSettings
from lumen.errors import Unauthorized

_CONTEXT = b"lumen image link v1"
_MAX_EXP_DIGITS = 12
_MAX_SIG_CHARS = 64
_MAX_USER_CHARS = 64


class ImageLinks:
    """Signs and verifies image links."""

    def __init__(
        self,
        secret: str,
        clock: Callable[[], float] = time.time,
        granularity_s: int = 60,
    ) -> None:
        if not secret:
            raise ValueError("a secret is required to sign image links")
        self._key = hmac.new(secret.encode(), _CONTEXT, hashlib.sha256).digest()
        self._clock = clock
        self._granularity_s = max(1, granularity_s)

    @classmethod
    def from_settings(cls, auth: AuthSettings) -> ImageLinks:
        if not auth.jwt_secret:
            raise ValueError("a JWT secret is required (LUMEN_AUTH__JWT_SECRET)")
        return cls(auth.jwt_secret)

    def sign(self, user: str, item: str, ttl_s: int) -> str:
        """`/image/<item>?u=<user>&exp=<epoch s>&sig=<mac>`, valid for at least `ttl_s`."""
        g = self._granularity_s
        exp = math.ceil((self._clock() + ttl_s) / g) * g
        query = urlencode({"u": user, "exp": exp, "sig": self._mac(user, item, exp)})
        return f"/image/{quote(item, safe='/')}?{query}"

    def verify(self, item: str, *, user: str, exp: str | int, sig: str) -> str:
        """The user the link was made for; Unauthorized when forged, altered or expired."""
        if not (isinstance(user, str) and isinstance(sig, str)) or not user:
            raise Unauthorized("invalid image link")
        if len(user) > _MAX_USER_CHARS or len(sig) > _MAX_SIG_CHARS:
            raise Unauthorized("invalid image link")
        exp_s = _parse_exp(exp)
        expected = self._mac(user, item, exp_s)
        if not hmac.compare_digest(expected.encode(), sig.encode("utf-8", "replace")):
            raise Unauthorized("invalid image link")
        if self._clock() >= exp_s:
            raise Unauthorized("this image link has expired; search again for a fresh one")
        return user

    def verify_query(self, item: str, query: Mapping[str, str]) -> str:
        """`verify` with `u`, `exp` and `sig` taken from a request's query parameters."""
        user, exp, sig = query.get("u"), query.get("exp"), query.get("sig")
        if user is None or exp is None or sig is None:
            raise Unauthorized("not authenticated: this image URL lacks its signature")
        return self.verify(item, user=user, exp=exp, sig=sig)

    def _mac(self, user: str, item: str, exp: int) -> str:
        payload = json.dumps(["image", user, item, exp], separators=(",", ":"))
        digest = hmac.new(self._key, payload.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _parse_exp(exp: str | int) -> int:
    if isinstance(exp, int) and not isinstance(exp, bool):
        return exp
    if not isinstance(exp, str) or len(exp) > _MAX_EXP_DIGITS:
        raise Unauthorized("invalid image link")
    if not (exp.isascii() and exp.isdigit()):
        raise Unauthorized("invalid image link")
    return int(exp)
