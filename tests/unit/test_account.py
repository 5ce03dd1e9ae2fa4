"""A user's own queue and data through fakes: delete, retry, reset decide here."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from lumen.account import AccountService
from lumen.errors import Conflict, NotFound


class FakeQueue:
    def __init__(self) -> None:
        self.states: dict[str, str] = {}
        self.resets: list[str] = []

    def status(self, user: str, max_items: int) -> dict[str, int]:
        return {"queue": sum(s == "queued" for s in self.states.values()), "max": max_items}

    def done(self, user: str) -> list[str]:
        return [i for i, s in self.states.items() if s == "done"]

    def _delete(self, item: str, state: str) -> int:
        if self.states.get(item) == state:
            del self.states[item]
            return 1
        return 0

    def delete_queued(self, user: str, item: str) -> int:
        return self._delete(item, "queued")

    def delete_failed(self, user: str, item: str) -> int:
        return self._delete(item, "error")

    def retry_failed(self, user: str, item: str) -> bool:
        if self.states.get(item) != "error":
            return False
        self.states[item] = "queued"
        return True

    def retry_all_failed(self, user: str) -> list[str]:
        return [i for i in list(self.states) if self.retry_failed(user, i)]

    def state_of(self, user: str, item: str) -> str | None:
        return self.states.get(item)

    def reset(self, user: str) -> None:
        self.resets.append(user)
        self.states.clear()


class FakeShard:
    def __init__(self) -> None:
        self.dropped: list[str] = []

    async def drop(self, user: str) -> None:
        self.dropped.append(user)


def make(tmp_path: Path) -> tuple[AccountService, FakeQueue, FakeShard, list[str]]:
    queue, shard, ended = FakeQueue(), FakeShard(), []
    account = AccountService(tmp_path, queue, lambda user: shard, 50, ended.append)
    return account, queue, shard, ended


def _file(tmp_path: Path, name: str) -> Path:
    path = tmp_path / "uploads" / "alice" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"jpeg")
    return path


def test_a_waiting_or_failed_item_is_removed_with_its_file(tmp_path: Path) -> None:
    account, queue, _, _ = make(tmp_path)
    queue.states = {"uploads/alice/q.jpg": "queued", "uploads/alice/e.jpg": "error"}
    files = [_file(tmp_path, "q.jpg"), _file(tmp_path, "e.jpg")]
    for item in list(queue.states):
        assert asyncio.run(account.delete_queued("alice", item)) == 1
    assert queue.states == {} and not any(f.exists() for f in files)


def test_removing_a_done_item_is_a_409_and_an_unknown_one_a_404(tmp_path: Path) -> None:
    account, queue, _, _ = make(tmp_path)
    queue.states = {"uploads/alice/d.jpg": "done"}
    kept = _file(tmp_path, "d.jpg")
    with pytest.raises(Conflict, match="done"):
        asyncio.run(account.delete_queued("alice", "uploads/alice/d.jpg"))
    with pytest.raises(NotFound):
        asyncio.run(account.delete_queued("alice", "uploads/alice/nope.jpg"))
    assert kept.exists() and queue.states == {"uploads/alice/d.jpg": "done"}


def test_only_failed_items_can_be_retried(tmp_path: Path) -> None:
    account, queue, _, _ = make(tmp_path)
    queue.states = {"e": "error", "d": "done", "f": "error"}
    asyncio.run(account.retry("alice", "e"))
    assert queue.states["e"] == "queued"
    with pytest.raises(Conflict):
        asyncio.run(account.retry("alice", "d"))
    with pytest.raises(NotFound):
        asyncio.run(account.retry("alice", "x"))
    assert asyncio.run(account.retry_all("alice")) == ["f"]


def test_a_reset_clears_redis_then_the_cached_space_then_files_and_ends_streams(
    tmp_path: Path,
) -> None:
    account, queue, shard, ended = make(tmp_path)
    mine = _file(tmp_path, "a.jpg")
    other = tmp_path / "uploads" / "bob" / "b.jpg"
    other.parent.mkdir(parents=True)
    other.write_bytes(b"x")
    asyncio.run(account.reset("alice"))
    assert queue.resets == ["alice"] and shard.dropped == ["alice"] and ended == ["alice"]
    assert not mine.exists() and other.exists()
