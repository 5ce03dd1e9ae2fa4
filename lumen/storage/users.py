"""Accounts (a hash per user, with a reset epoch) and attempt counters for throttling, in Redis."""

from __future__ import annotations

import time

from lumen.keys import Keys
from lumen.storage.client import Client
from lumen.storage.text import text

# HINCRBY on a missing hash would create a half account; bump only an existing one.
_BUMP_EPOCH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
return redis.call('HINCRBY', KEYS[1], 'epoch', 1)
"""

# DECR on an expired counter would leave -1 without a TTL; undo only a live attempt.
_FORGET_ATTEMPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return redis.call('DECR', KEYS[1])
"""


class UserStore:
    """Implements `lumen.auth.UserStore`: users as hashes, attempts as expiring counters.

    Callers validate usernames and bound subjects before they get here; nothing this class
    is given is checked again.
    """

    def __init__(self, client: Client, keys: Keys) -> None:
        self._r = client
        self._k = keys
        self._bump_epoch = client.register_script(_BUMP_EPOCH)
        self._forget_attempt = client.register_script(_FORGET_ATTEMPT)

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

    def epoch(self, username: str) -> int | None:
        """How many times the account was reset; None when there is no such account."""
        stored, epoch = self._r.hmget(self._k.user(username), ["password_hash", "epoch"])
        if stored is None:
            return None
        return int(epoch or 0)

    def bump_epoch(self, username: str) -> int | None:
        """Count a reset; the new epoch, or None when there is no such account."""
        value = self._bump_epoch(keys=[self._k.user(username)])
        return int(value) if value is not None else None

    def count_attempt(self, subject: str, window_s: int) -> tuple[int, int]:
        """Count one attempt; (attempts in the window, seconds until the window ends).

        The window starts with the first attempt and is not extended by later ones.
        """
        key = self._k.throttle(subject)
        pipe = self._r.pipeline(transaction=True)
        pipe.incr(key)
        pipe.expire(key, window_s, nx=True)
        pipe.ttl(key)
        count, _, ttl = pipe.execute()
        return int(count), max(int(ttl), 0)

    def forget_attempt(self, subject: str) -> None:
        """Undo one counted attempt (a login that succeeded is not a failure)."""
        self._forget_attempt(keys=[self._k.throttle(subject)])

    def clear_attempts(self, subject: str) -> None:
        self._r.delete(self._k.throttle(subject))
