"""In-memory fakes of the core's storage seams (Protocols), for unit tests without Redis."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FakeClock:
    """A clock that moves only when a test moves it."""

    now: float = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeUserStore:
    """`lumen.auth.UserStore` in memory; attempt windows follow `clock`.

    `touched` records every name and subject the store was asked about, so tests can show
    that rejected input never reached storage.
    """

    clock: FakeClock = field(default_factory=FakeClock)
    hashes: dict[str, str] = field(default_factory=dict)
    epochs: dict[str, int] = field(default_factory=dict)
    attempts: dict[str, tuple[int, float]] = field(default_factory=dict)
    touched: list[str] = field(default_factory=list)

    def create(self, username: str, password_hash: str) -> bool:
        self.touched.append(username)
        if username in self.hashes:
            return False
        self.hashes[username] = password_hash
        self.epochs[username] = 0
        return True

    def exists(self, username: str) -> bool:
        self.touched.append(username)
        return username in self.hashes

    def password_hash(self, username: str) -> str | None:
        self.touched.append(username)
        return self.hashes.get(username)

    def set_password_hash(self, username: str, password_hash: str) -> None:
        self.hashes[username] = password_hash

    def epoch(self, username: str) -> int | None:
        self.touched.append(username)
        return self.epochs.get(username) if username in self.hashes else None

    def bump_epoch(self, username: str) -> int | None:
        if username not in self.hashes:
            return None
        self.epochs[username] += 1
        return self.epochs[username]

    def delete(self, username: str) -> None:
        """Not part of the Protocol: an account removed behind the Authenticator's back."""
        self.hashes.pop(username, None)
        self.epochs.pop(username, None)

    def count_attempt(self, subject: str, window_s: int) -> tuple[int, int]:
        self.touched.append(subject)
        count, ends = self._live(subject) or (0, self.clock() + window_s)
        self.attempts[subject] = (count + 1, ends)
        return count + 1, int(ends - self.clock())

    def forget_attempt(self, subject: str) -> None:
        live = self._live(subject)
        if live:
            self.attempts[subject] = (live[0] - 1, live[1])

    def clear_attempts(self, subject: str) -> None:
        self.attempts.pop(subject, None)

    def _live(self, subject: str) -> tuple[int, float] | None:
        entry = self.attempts.get(subject)
        if entry is None or entry[1] <= self.clock():
            self.attempts.pop(subject, None)
            return None
        return entry
