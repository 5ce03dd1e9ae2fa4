"""A user's own queue and data: status, done list, removing a queued item, reset.

What an operation means is decided here, not in HTTP code: a reset clears Redis first (the
truth), then the shard's cached space, then the files; a delete removes only a waiting item.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from lumen.errors import Conflict, NotFound
from lumen.paths import resolve_item, user_root


class AccountQueue(Protocol):
    """The queue operations behind these use cases (`lumen.storage.QueueStore` has them)."""

    def status(self, user: str, max_items: int) -> Any: ...
    def done(self, user: str) -> list[str]: ...
    def delete_queued(self, user: str, item: str) -> int: ...
    def delete_failed(self, user: str, item: str) -> int: ...
    def retry_failed(self, user: str, item: str) -> bool: ...
    def retry_all_failed(self, user: str) -> list[str]: ...
    def state_of(self, user: str, item: str) -> str | None: ...
    def reset(self, user: str) -> None: ...


class SpaceCache(Protocol):
    """The shard that caches the user's space."""

    async def drop(self, user: str) -> None: ...


@dataclass
class AccountService:
    """The caller's queue and data, and nobody else's."""

    data_dir: Path
    queue: AccountQueue
    space_for: Callable[[str], SpaceCache]
    max_status_items: int
    end_streams: Callable[[str], None]

    async def status(self, user: str) -> Any:
        """The spec's `/status` payload (each list capped at `max_status_items`)."""
        return await asyncio.to_thread(self.queue.status, user, self.max_status_items)

    async def done(self, user: str) -> list[str]:
        return await asyncio.to_thread(self.queue.done, user)

    async def delete_queued(self, user: str, item: str) -> int:
        """Remove a waiting or errored item and its file; 404 if unknown, 409 otherwise."""
        removed = await asyncio.to_thread(self.queue.delete_queued, user, item)
        if removed == 0:
            removed = await asyncio.to_thread(self.queue.delete_failed, user, item)
        if removed == 0:
            state = await asyncio.to_thread(self.queue.state_of, user, item)
            if state is None:
                raise NotFound(f"{item} is not in your queue")
            raise Conflict(
                f"{item} is {state}; only waiting or failed items can be removed "
                "(POST /reset removes everything)"
            )
        await asyncio.to_thread(self._remove_file, user, item)
        return removed

    async def retry(self, user: str, item: str) -> None:
        """Queue a failed item again with a fresh retry budget; 404/409 when it is not failed."""
        if await asyncio.to_thread(self.queue.retry_failed, user, item):
            return
        state = await asyncio.to_thread(self.queue.state_of, user, item)
        if state is None:
            raise NotFound(f"{item} is not in your queue")
        raise Conflict(f"{item} is {state}, not failed; only failed items can be retried")

    async def retry_all(self, user: str) -> list[str]:
        """Queue every failed item of the user again; the items requeued."""
        return await asyncio.to_thread(self.queue.retry_all_failed, user)

    async def reset(self, user: str) -> None:
        """Delete the user's index, metadata, queue records and files; the account stays.

        Open event streams of the account end (they showed what no longer exists).
        """
        await asyncio.to_thread(self.queue.reset, user)
        await asyncio.to_thread(self.end_streams, user)
        await self.space_for(user).drop(user)
        await asyncio.to_thread(shutil.rmtree, user_root(self.data_dir, user), True)

    def _remove_file(self, user: str, item: str) -> None:
        resolve_item(self.data_dir, user, item).unlink(missing_ok=True)
