"""Accounts and login throttling in Redis."""

from __future__ import annotations

import time

import redis

from lumen.keys import Keys
from lumen.storage.text import text


class UserStore:
    """Users as hashes; failed logins as expiring counters."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self._r = client
        self._k = keys

    def create(self, username: str, password_hash: str) -> bool:
        """Create the user; False when the name is taken (atomic)."""
        key = self._k.user(username)
        created = self._r.hsetnx(key, "password_hash", password_hash)
        if created:
            self._r.hset(key, "created", str(int(time.time())))
        return bool(created)

    def password_hash(self, username: str) -> str | None:
        value = self._r.hget(self._k.user(username), "password_hash")
        return text(value) if value is not None else None

    def set_password_hash(self, username: str, password_hash: str) -> None:
        self._r.hset(self._k.user(username), "password_hash", password_hash)

    def exists(self, username: str) -> bool:
        return bool(self._r.exists(self._k.user(username)))

    def failures(self, username: str) -> tuple[int, int]:
        """(failed attempts in the current window, seconds until the window ends)."""
        key = self._k.login_fail(username)
        pipe = self._r.pipeline()
        pipe.get(key)
        pipe.ttl(key)
        count, ttl = pipe.execute()
        return int(count or 0), max(int(ttl), 0)

    def record_failure(self, username: str, window_s: int) -> int:
        key = self._k.login_fail(username)
        pipe = self._r.pipeline()
        pipe.incr(key)
        pipe.expire(key, window_s, nx=True)
        count, _ = pipe.execute()
        return int(count)

    def clear_failures(self, username: str) -> None:
        self._r.delete(self._k.login_fail(username))
