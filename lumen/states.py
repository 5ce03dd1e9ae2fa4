"""Where an item stands in its user's queue: the state names code compares and clients see.

    queued ──claim──► processing ──commit──► done
      ▲                   │ failure, worker death or deadline
      └──── retry ────────┤
                          └── past max_retries, or permanent ──► error

The queue's scripts (`lumen.storage.scripts`) answer with these same strings, and events carry
them in `state`. Two answers of the retry script are not states an item rests in: `gone` (it
had already left processing) and `live` (still processing, its deadline not yet due).
"""

from __future__ import annotations

from enum import StrEnum


class ItemState(StrEnum):
    """An item's state; the values are the wire strings (`/status`, events, Lua)."""

    QUEUED = "queued"
    PROCESSING = "processing"
    DONE = "done"
    ERROR = "error"
    GONE = "gone"  # a retry found it no longer processing (settled by another path)
    LIVE = "live"  # a deadline sweep found it still processing and not yet due
