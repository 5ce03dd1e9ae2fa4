"""Event kinds and what each viewer may see of the shared event list."""

from __future__ import annotations

import json
from typing import Any

from lumen.events import EventKind, redact_event, visible_events

# newest first, as the store returns them; one of each kind the producers record
EVENTS: list[dict[str, Any]] = [
    {"ts": 9, "type": "item_failed", "user": "bob", "item": "uploads/bob/tax.jpg", "reason": "x"},
    {
        "ts": 8,
        "type": "worker_dead",
        "worker": "embedder-a",
        "user": "bob",
        "requeued": ["uploads/bob/tax.jpg", "uploads/bob/id.jpg"],
    },
    {
        "ts": 8,
        "type": "worker_dead",
        "worker": "embedder-a",
        "user": "carol",
        "requeued": ["uploads/carol/c.jpg"],
    },
    {
        "ts": 8,
        "type": "worker_dead",
        "worker": "embedder-a",
        "user": "alice",
        "requeued": ["uploads/alice/a.jpg"],
    },
    {"ts": 7, "type": "task_timeout", "user": "bob", "item": "uploads/bob/b.jpg", "state": "error"},
    {"ts": 6, "type": "item_failed", "user": "alice", "item": "uploads/alice/a.jpg", "reason": "r"},
    {"ts": 5, "type": "replica_dead", "worker": "embedder-a", "cause": "out of memory"},
    {"ts": 4, "type": "replica_stopped", "worker": "embedder-b", "cause": "stopped"},
    {"ts": 3, "type": "node_dead", "node_id": "n1", "cause": "lost unexpectedly"},
]


def _mentions(events: list[dict[str, Any]], *needles: str) -> bool:
    text = json.dumps(events)
    return any(needle in text for needle in needles)


def test_event_kinds_are_the_strings_clients_already_see() -> None:
    assert EventKind.WORKER_DEAD == "worker_dead"
    assert json.dumps({"type": EventKind.TASK_TIMEOUT}) == '{"type": "task_timeout"}'
    assert {str(k) for k in EventKind} >= {
        "worker_dead", "task_timeout", "item_failed", "replica_dead", "node_dead",
    }  # fmt: skip


def test_a_plain_user_never_sees_another_users_name_items_paths_or_reasons() -> None:
    shown = visible_events(EVENTS, viewer="alice", is_admin=False)
    others = [e for e in shown if e.get("user") != "alice"]
    assert not _mentions(others, "bob", "carol", "uploads/", "tax.jpg", '"reason"')
    assert all("user" not in e and "item" not in e and "requeued" not in e for e in others)


def test_a_plain_user_sees_their_own_events_in_full() -> None:
    shown = visible_events(EVENTS, viewer="alice", is_admin=False)
    own = [e for e in shown if e.get("user") == "alice"]
    assert own == [EVENTS[3], EVENTS[5]]


def test_a_plain_user_still_sees_system_events_with_their_causes() -> None:
    shown = visible_events(EVENTS, viewer="alice", is_admin=False)
    kinds = [e["type"] for e in shown]
    assert {"worker_dead", "task_timeout", "replica_dead", "replica_stopped", "node_dead"} <= set(
        kinds
    )
    assert {"ts": 7, "type": "task_timeout", "state": "error"} in shown
    assert EVENTS[6] in shown and EVENTS[8] in shown


def test_another_users_failed_item_is_hidden_entirely() -> None:
    shown = visible_events(EVENTS, viewer="alice", is_admin=False)
    failed = [e for e in shown if e["type"] == "item_failed"]
    assert failed == [EVENTS[5]]


def test_one_worker_death_across_other_users_shows_once_with_the_count_requeued() -> None:
    shown = visible_events(EVENTS, viewer="alice", is_admin=False)
    deaths = [e for e in shown if e["type"] == "worker_dead"]
    assert {"ts": 8, "type": "worker_dead", "worker": "embedder-a", "requeued_count": 3} in deaths
    assert len(deaths) == 2  # the merged one of bob and carol, and alice's own


def test_operators_see_every_event_unchanged() -> None:
    assert visible_events(EVENTS, viewer="root", is_admin=True) == EVENTS


def test_the_order_newest_first_is_kept() -> None:
    shown = visible_events(EVENTS, viewer="dave", is_admin=False)
    assert [e["ts"] for e in shown] == sorted((e["ts"] for e in shown), reverse=True)


def test_an_unknown_kind_keeps_only_system_fields() -> None:
    event = {"ts": 1, "type": "index_repaired", "user": "bob", "items": ["uploads/bob/x.jpg"]}
    assert visible_events([event], viewer="alice", is_admin=False) == [
        {"ts": 1, "type": "index_repaired"}
    ]
    assert redact_event({"ts": 1, "type": "x", "path": "/data/uploads/bob"}) == {
        "ts": 1,
        "type": "x",
    }


def test_visible_events_does_not_change_the_events_it_was_given() -> None:
    before = json.dumps(EVENTS)
    shown = visible_events(EVENTS, viewer="alice", is_admin=False)
    shown[0]["ts"] = -1
    assert json.dumps(EVENTS) == before
