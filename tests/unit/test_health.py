"""Worker health from plain state-API rows: causes people can read, stops that are not deaths."""

from __future__ import annotations

from typing import Any

import pytest

from lumen.events import EventKind
from lumen.health import (
    HEALTH_CHECK_CAUSE,
    ReplicaState,
    WorkerBook,
    describe_death,
    describe_node_exit,
    heartbeat_is_fresh,
    node_exit_from_row,
    replica_from_row,
    short_detail,
)
from lumen.naming import replica_class_name, replica_tag_of, worker_id

NAME = "SERVE_REPLICA::lumen#Embedder#x7k2p9"
SIGKILL_MESSAGE = (
    "The actor is dead because its worker process has died. Worker exit type: SYSTEM_ERROR "
    "Worker exit detail: Worker unexpectedly exits with a connection error code 2. End of file. "
    "There are some potential root causes. (1) The process is killed by SIGKILL by OOM killer "
    "due to high memory usage. (2) ray stop --force is called. (3) The worker is crashed "
    "unexpectedly due to SIGSEGV or other unexpected errors."
)


def died(reason: str, message: str = "", **extra: Any) -> dict[str, Any]:
    """An ActorDeathCause as `list_actors(detail=True)` returns it (snake_case dict)."""
    ctx = {
        "error_message": message,
        "owner_id": "ffff",
        "owner_ip_address": "10.0.0.1",
        "node_ip_address": "10.0.0.2",
        "pid": 4242,
        "name": NAME,
        "ray_namespace": "serve",
        "class_name": "ServeReplica:lumen:Embedder",
        "actor_id": "abcd",
        "never_started": False,
        "reason": reason,
        **extra,
    }
    return {"actor_died_error_context": ctx}


def row(state: str, death_cause: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "actor_id": "abcd",
        "name": NAME,
        "state": state,
        "node_id": "node-1",
        "death_cause": death_cause,
    }


RAY_KILL = died("RAY_KILL", "The actor is dead because it was killed by `ray.kill`.")


# ---- causes ----


def test_a_sigkilled_replica_is_described_as_killed() -> None:
    death = describe_death(died("WORKER_DIED", SIGKILL_MESSAGE))
    assert death.cause.startswith("killed") and not death.intentional


def test_out_of_memory_is_said_in_words() -> None:
    death = describe_death({"oom_context": {"error_message": "Memory on the node ...", "x": 1}})
    assert death.cause.startswith("out of memory")
    exit_type = died(
        "WORKER_DIED", "Worker exit type: NODE_OUT_OF_MEMORY Worker exit detail: low memory"
    )
    assert describe_death(exit_type).cause.startswith("out of memory")


@pytest.mark.parametrize(
    ("node_reason", "expected"),
    [
        ("UNEXPECTED_TERMINATION", "its node was lost"),
        ("AUTOSCALER_DRAIN_PREEMPTED", "its node was lost: the cloud reclaimed it"),
        ("EXPECTED_TERMINATION", "its node was shut down"),
    ],
)
def test_a_lost_node_is_named_as_the_cause(node_reason: str, expected: str) -> None:
    cause = died(
        "NODE_DIED",
        "The actor died because its node has died. Node Id: 123\n\tthe actor's node was ...",
        node_death_info={"reason": node_reason, "reason_message": ""},
    )
    death = describe_death(cause)
    assert death.cause.startswith(expected) and not death.intentional


def test_an_error_exit_gives_a_short_message_not_a_traceback() -> None:
    message = (
        "The actor is dead because its worker process has died. Worker exit type: USER_ERROR "
        'Worker exit detail: Traceback (most recent call last):\n  File "x.py", line 1\n'
        "RuntimeError: CUDA error: device-side assert triggered\n"
    )
    death = describe_death(died("WORKER_DIED", message))
    assert (
        death.cause
        == "exited with an error (RuntimeError: CUDA error: device-side assert triggered)"
    )


def test_a_constructor_failure_says_the_replica_failed_to_start() -> None:
    cause = {
        "creation_task_failure_context": {
            "formatted_exception_string": "Traceback (most recent call last):\n ...\n"
            "FileNotFoundError: /models/vit.pt",
            "language": "PYTHON",
            "serialized_exception": "",
        }
    }
    assert describe_death(cause).cause == "failed to start: FileNotFoundError: /models/vit.pt"


@pytest.mark.parametrize(
    "cause",
    [
        died("WORKER_DIED", SIGKILL_MESSAGE),
        RAY_KILL,
        died("OWNER_DIED", "The actor is dead because its owner has died. Owner Id: ff"),
        died("NODE_DIED", "", node_death_info={"reason": "UNEXPECTED_TERMINATION"}),
        {"oom_context": {"error_message": "m"}},
        {"runtime_env_failed_context": {"error_message": "pip failed\nmore"}},
        {"actor_unschedulable_context": {"error_message": "no node has GPU"}},
        {"something_new": {"a": 1}},
        {},
        None,
    ],
)
def test_no_cause_is_ever_a_python_repr(cause: dict[str, Any] | None) -> None:
    sentence = describe_death(cause).cause
    assert sentence and "{" not in sentence and "': " not in sentence and "owner_id" not in sentence
    assert "\n" not in sentence and len(sentence) <= 300


def test_ray_kill_and_intended_exits_are_marked_as_on_purpose() -> None:
    assert describe_death(RAY_KILL).intentional
    intended = "Worker exit type: INTENDED_USER_EXIT Worker exit detail: exit_actor() is called."
    assert describe_death(died("WORKER_DIED", intended)).intentional
    assert not describe_death(died("WORKER_DIED", SIGKILL_MESSAGE)).intentional


def test_short_detail_keeps_one_line_and_caps_its_length() -> None:
    assert short_detail("first line\nsecond line") == "first line"
    assert short_detail("") == ""
    assert len(short_detail("x" * 1000)) == 200


# ---- rows and names ----


def test_a_state_api_row_becomes_a_replica_with_the_shared_worker_id() -> None:
    rep = replica_from_row(row("DEAD", died("WORKER_DIED", SIGKILL_MESSAGE)))
    assert rep.worker == worker_id("x7k2p9") == "embedder-x7k2p9"
    assert rep.state == "DEAD" and rep.node_id == "node-1"
    assert rep.death_cause is not None and rep.death_cause.startswith("killed")
    alive = replica_from_row(row("ALIVE"))
    assert alive.death_cause is None and not alive.intentional


def test_replica_names_and_classes_follow_serve() -> None:
    assert replica_tag_of(NAME) == "x7k2p9" and replica_tag_of("no-hash") is None
    assert replica_class_name("lumen", "Embedder") == "ServeReplica:lumen:Embedder"


def test_an_idle_node_removal_is_a_stop_and_a_crash_is_a_death() -> None:
    idle = node_exit_from_row(
        {"node_id": "n1", "state_message": "Terminated due to idle (no Ray activity)"}
    )
    assert idle.intentional and idle.event()[0] == EventKind.NODE_STOPPED
    lost = node_exit_from_row({"node_id": "n2", "state_message": "Unexpected termination: oom"})
    assert not lost.intentional and lost.event() == (
        EventKind.NODE_DEAD,
        {"node_id": "n2", "cause": "lost unexpectedly (oom)"},
    )
    assert describe_node_exit(None).cause == "lost; Ray gave no reason"


# ---- the book: stopped versus dead ----


def _book() -> WorkerBook:
    return WorkerBook(stale_after_s=10, dead_ttl_s=100)


def _dead(cause: dict[str, Any]) -> ReplicaState:
    return replica_from_row(row("DEAD", cause))


def test_heartbeat_freshness_has_an_inclusive_limit() -> None:
    assert heartbeat_is_fresh(100, now=110, stale_after_s=10)
    assert not heartbeat_is_fresh(100, now=110.5, stale_after_s=10)
    assert not heartbeat_is_fresh(None, now=110, stale_after_s=10)


def test_a_scale_down_is_a_normal_stop_not_a_death() -> None:
    book = _book()
    alive = replica_from_row(row("ALIVE"))
    book.observe([alive], {alive.worker: {"ts": 1000}}, now=1001)
    changes = book.observe([_dead(RAY_KILL)], {alive.worker: {"ts": 1000}}, now=1003)
    assert changes.view[alive.worker]["status"] == "stopped"
    assert changes.dead == [] and [r.worker for r in changes.stopped] == [alive.worker]
    assert [kind for kind, _ in changes.events()] == [EventKind.REPLICA_STOPPED]
    assert book.update([_dead(RAY_KILL)], {}, now=1004)[1] == []  # never a replica_dead


def test_a_sigkill_is_a_death_with_a_replica_dead_event() -> None:
    book = _book()
    alive = replica_from_row(row("ALIVE"))
    book.observe([alive], {alive.worker: {"ts": 1000}}, now=1001)
    changes = book.observe([_dead(died("WORKER_DIED", SIGKILL_MESSAGE))], {}, now=1003)
    entry = changes.view[alive.worker]
    assert entry["status"] == "dead" and entry["cause"].startswith("killed")
    [(kind, fields)] = changes.events()
    assert kind == EventKind.REPLICA_DEAD and fields["worker"] == alive.worker
    assert fields["cause"] == entry["cause"] and fields["node_id"] == "node-1"


def test_serve_stopping_a_replica_whose_heartbeat_went_stale_is_a_death() -> None:
    book = _book()
    alive = replica_from_row(row("ALIVE"))
    book.observe([alive], {alive.worker: {"ts": 1000}}, now=1050)  # 50 s old: stale
    changes = book.observe([_dead(RAY_KILL)], {}, now=1052)
    assert changes.view[alive.worker]["status"] == "dead"
    assert changes.view[alive.worker]["cause"].startswith(HEALTH_CHECK_CAUSE)
    assert [r.worker for r in changes.dead] == [alive.worker] and changes.stopped == []


def test_serve_stopping_a_replica_that_reported_a_problem_is_a_death_with_that_problem() -> None:
    book = _book()
    alive = replica_from_row(row("ALIVE"))
    beat = {"ts": 1000, "healthy": False, "problem": "the model returns NaN"}
    book.observe([alive], {alive.worker: beat}, now=1001)
    changes = book.observe([_dead(RAY_KILL)], {}, now=1002)
    assert changes.view[alive.worker] == {
        "status": "dead",
        "cause": f"{HEALTH_CHECK_CAUSE}: the model returns NaN",
        "node_id": "node-1",
    }


def test_a_restarted_monitor_does_not_report_old_deaths_again() -> None:
    book = _book()
    changes = book.observe([_dead(died("WORKER_DIED", SIGKILL_MESSAGE))], {}, now=1000)
    assert changes.view and changes.events() == []
    assert book.observe([_dead(died("WORKER_DIED", SIGKILL_MESSAGE))], {}, now=1001).events() == []


def test_an_ended_replica_is_reported_once_and_forgotten_after_dead_ttl_s() -> None:
    book = _book()
    alive = replica_from_row(row("ALIVE"))
    book.observe([alive], {}, now=1000)
    assert book.observe([_dead(RAY_KILL)], {}, now=1001).stopped
    again = book.observe([_dead(RAY_KILL)], {}, now=1002)
    assert again.events() == [] and again.view[alive.worker]["status"] == "stopped"
    assert book.observe([_dead(RAY_KILL)], {}, now=1200).view == {}


def test_an_alive_replica_is_starting_then_healthy_then_stale_when_its_beats_stop() -> None:
    book = _book()
    alive = replica_from_row(row("ALIVE"))
    assert book.observe([alive], {}, now=1000).view[alive.worker]["status"] == "starting"
    view = book.observe([alive], {alive.worker: {"ts": 1001, "cpu": 3.0}}, now=1002).view
    assert view[alive.worker]["status"] == "health" and view[alive.worker]["metrics"]["cpu"] == 3
    view = book.observe([alive], {alive.worker: {"ts": 1001}}, now=1050).view
    assert view[alive.worker]["status"] == "stale"
    # its beat expired from Redis: still stale, not "starting" again
    assert book.observe([alive], {}, now=2000).view[alive.worker] == {
        "status": "stale",
        "node_id": "node-1",
    }


def test_worker_book_reports_health_stale_and_dead_then_ages_dead_out() -> None:
    book = WorkerBook(stale_after_s=10, dead_ttl_s=100)
    reps = [ReplicaState("embedder-a", "ALIVE"), ReplicaState("embedder-b", "ALIVE")]
    beats = {"embedder-a": {"cpu": 1.0, "mem": 2.0, "ts": 1000}, "embedder-b": {"ts": 900}}
    view, dead = book.update(reps, beats, now=1005)
    assert view["embedder-a"]["status"] == "health" and view["embedder-a"]["metrics"]["cpu"] == 1.0
    assert view["embedder-b"]["status"] == "stale" and dead == []
    view, dead = book.update(
        [ReplicaState("embedder-a", "DEAD", death_cause="killed")], beats, now=1010
    )
    assert view == {"embedder-a": {"status": "dead", "cause": "killed"}} and dead == ["embedder-a"]
    _, dead = book.update([ReplicaState("embedder-a", "DEAD")], beats, now=1020)
    assert dead == []  # reported once
    view, _ = book.update([ReplicaState("embedder-a", "DEAD")], beats, now=1200)
    assert view == {}


def test_only_replicas_with_a_fresh_heartbeat_pace_the_dispatcher() -> None:
    import time as _time

    from lumen.health import LiveReplicas

    now = _time.time()

    class Beats:
        def all(self) -> dict[str, dict[str, object]]:
            return {
                "embedder-a": {"ts": now, "batch": 256},
                "embedder-b": {"ts": now - 60, "batch": 256},  # stale: gone or hung
                "embedder-c": {"ts": now},  # an older replica that does not say
            }

    assert LiveReplicas(Beats(), stale_after_s=15).batch_sizes() == [256]
