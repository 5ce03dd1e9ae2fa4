"""Admission control: how many streams, uploads and PDF questions one replica runs at once.

Per user and in total, so one user (or one script) can never take the request slots and
threads that every other user needs. A refused request gets a 429 with `Retry-After` and a
`code` at once; nothing waits in a queue. Counts are per ingress replica: a cluster with N
replicas admits N times as much, as it has N times the slots.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum

from lumen.config import AdmissionSettings
from lumen.errors import TooManyQuestions, TooManyRequests, TooManyStreams, TooManyUploads


class Work(StrEnum):
    STREAM = "stream"
    UPLOAD = "upload"
    PDF_QUESTION = "pdf_question"


_REFUSAL: dict[Work, tuple[type[TooManyRequests], str]] = {
    Work.STREAM: (TooManyStreams, "event streams; close one (another tab?) and retry"),
    Work.UPLOAD: (TooManyUploads, "uploads in progress; wait for one to finish"),
    Work.PDF_QUESTION: (TooManyQuestions, "PDF questions in progress; wait for an answer"),
}


class Admission:
    """Counts work in progress per (kind, user) and streams in total; refuses the excess."""

    def __init__(self, settings: AdmissionSettings) -> None:
        self.settings = settings
        self.per_user: Counter[tuple[Work, str]] = Counter()
        self.streams = 0

    def cap(self, kind: Work) -> int:
        s = self.settings
        return {
            Work.STREAM: s.streams_per_user,
            Work.UPLOAD: s.uploads_per_user,
            Work.PDF_QUESTION: s.pdf_questions_per_user,
        }[kind]

    @contextmanager
    def admit(self, kind: Work, user: str) -> Iterator[None]:
        """Hold one slot of `kind` for `user` inside the block, or raise a 429 at once."""
        self.acquire(kind, user)
        try:
            yield
        finally:
            self.release(kind, user)

    def acquire(self, kind: Work, user: str) -> None:
        error, what = _REFUSAL[kind]
        retry = self.settings.retry_after_s
        cap = self.cap(kind)
        if self.per_user[(kind, user)] >= cap:
            raise error(f"you already have {cap} {what}", retry)
        if kind is Work.STREAM and self.streams >= self.settings.streams_total:
            raise error("the server has as many event streams open as it allows; retry", retry)
        self.per_user[(kind, user)] += 1
        if kind is Work.STREAM:
            self.streams += 1

    def release(self, kind: Work, user: str) -> None:
        key = (kind, user)
        self.per_user[key] -= 1
        if self.per_user[key] <= 0:
            del self.per_user[key]
        if kind is Work.STREAM:
            self.streams -= 1

    def in_use(self, kind: Work, user: str) -> int:
        return self.per_user[(kind, user)]


class PenaltyBox:
    """Addresses refused with a 429 on the anonymous routes, until their Retry-After.

    Their next requests are refused before the body is parsed or a thread is used, so a
    throttled flood costs the server almost nothing. Bounded: the oldest entries go first.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self.until: dict[str, float] = {}

    def hold(self, address: str, seconds: float, now: float) -> None:
        self.until.pop(address, None)
        self.until[address] = now + seconds
        if len(self.until) > self.max_entries:
            for stale in [a for a, t in self.until.items() if t <= now]:
                del self.until[stale]
            while len(self.until) > self.max_entries:
                del self.until[next(iter(self.until))]

    def wait_s(self, address: str, now: float) -> int:
        """Seconds `address` must still wait (0 when it may try)."""
        until = self.until.get(address)
        if until is None:
            return 0
        if until <= now:
            del self.until[address]
            return 0
        return max(1, round(until - now))


class Tarpit:
    """Holds failed anonymous answers (wrong password, throttled, busy) for `delay_s`.

    A closed-loop attacker then sends at most one request per `delay_s` per connection
    instead of as many as the server can refuse, which is what made refusals expensive.
    At most `max_held` answers wait at once (each holds a request slot); past that they
    go out at once, so the tarpit itself can never fill the ingress.
    """

    def __init__(self, delay_s: float, max_held: int) -> None:
        self.delay_s = delay_s
        self.max_held = max_held
        self.held = 0

    async def hold(self) -> None:
        if self.delay_s <= 0 or self.held >= self.max_held:
            return
        self.held += 1
        try:
            await asyncio.sleep(self.delay_s)
        finally:
            self.held -= 1
