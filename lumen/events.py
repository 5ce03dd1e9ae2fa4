"""Monitor events: their kinds (the `type` on the wire) and what each viewer may see of them.

Events are shared by every user of the service, but most carry one user's data: a name,
the items (file paths) of that user, a failure reason that can quote a file name. A plain
user sees every event, with the fields that name another user's data removed; their own
events come in full. Operators (`LUMEN_AUTH__ADMIN_USERS`) see everything.

    kind              fields                        a plain user sees of another user's
    worker_dead       worker, user, requeued        worker, requeued_count
    task_timeout      user, item, state             state (queued / error)
    item_failed       user, item, reason            nothing: it is only about that item
    replica_dead      worker, cause, node_id        everything (no user data)
    replica_stopped   worker, cause, node_id        everything
    node_dead         node_id, cause                everything
    node_stopped      node_id, cause                everything
    index_repaired    user, mirrored, stored        the kind and time only

An unknown kind is treated the same way: only the system fields below survive.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any


class EventKind(StrEnum):
    """The closed set of event types; the values are the strings clients see."""

    WORKER_DEAD = "worker_dead"
    TASK_TIMEOUT = "task_timeout"
    ITEM_FAILED = "item_failed"
    REPLICA_DEAD = "replica_dead"
    REPLICA_STOPPED = "replica_stopped"
    NODE_DEAD = "node_dead"
    NODE_STOPPED = "node_stopped"
    INDEX_REPAIRED = "index_repaired"


# Fields that describe the system, never a user: kept whoever the viewer is.
SYSTEM_FIELDS = frozenset({"ts", "type", "worker", "node_id", "cause", "state"})
# Kinds that are about one user's item and nothing else: hidden from everybody else.
PRIVATE_KINDS = frozenset({EventKind.ITEM_FAILED})


def visible_events(
    events: Iterable[Mapping[str, Any]], viewer: str, is_admin: bool
) -> list[dict[str, Any]]:
    """The events `viewer` may see, in the order given (newest first in the store).

    Operators get every event unchanged. A plain user gets their own events in full and
    everybody else's without names, items, paths or reasons; one worker death that
    requeued several users' items shows once, with the count of those requeued.
    """
    if is_admin:
        return [dict(event) for event in events]
    out: list[dict[str, Any]] = []
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for event in events:
        owner = event.get("user")
        if owner is not None and owner == viewer:
            out.append(dict(event))
            continue
        if owner is not None and event.get("type") in PRIVATE_KINDS:
            continue
        shown = redact_event(event)
        if "requeued_count" in shown:
            key = (shown.get("type"), shown.get("worker"), shown.get("ts"))
            if key in merged:
                merged[key]["requeued_count"] += shown["requeued_count"]
                continue
            merged[key] = shown
        out.append(shown)
    return out


def redact_event(event: Mapping[str, Any]) -> dict[str, Any]:
    """`event` with only its system fields; a `requeued` list becomes `requeued_count`."""
    shown = {k: v for k, v in event.items() if k in SYSTEM_FIELDS}
    requeued = event.get("requeued")
    if isinstance(requeued, list):
        shown["requeued_count"] = len(requeued)
    return shown
