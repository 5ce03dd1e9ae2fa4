"""Worker health: Ray's state API joined with heartbeats, as the project's own models.

The only module that imports `ray.util.state`. Everything above the "state API" line is
pure and reads plain dicts, so unit tests need no Ray.

How a replica ended is read from the actor's `death_cause` (the `ActorDeathCause` message of
Ray's `common.proto`, as a dict). Serve stops a replica that it no longer wants (scale-down,
redeploy, shutdown) with a graceful shutdown followed by `ray.kill`, which Ray records as
`actor_died_error_context.reason == "RAY_KILL"`. Serve also stops a replica that fails its
health checks the same way, so a `RAY_KILL` counts as a normal stop only when the replica
was last seen healthy; after a stale heartbeat, or a heartbeat that reported a problem
(`"healthy": false`), it is a death. A SIGKILL, a crash, an out-of-memory kill or a lost
node are deaths with a cause written for a person.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from lumen.events import EventKind
from lumen.naming import EMBEDDER, replica_class_name, replica_tag_of, worker_id

_MAX_DETAIL_CHARS = 200
HEALTH_CHECK_CAUSE = "stopped by Ray Serve after failing its health checks"


@dataclass(frozen=True)
class Death:
    """How an actor or node ended: a sentence for people, and whether it was on purpose."""

    cause: str
    intentional: bool = False


@dataclass(frozen=True)
class ReplicaState:
    """One Embedder replica as Ray sees it."""

    worker: str  # naming.worker_id(replica tag): the id heartbeats and processing_workers use
    state: str  # Ray actor state: ALIVE, DEAD, RESTARTING, PENDING_CREATION...
    node_id: str | None = None
    death_cause: str | None = None  # a sentence (describe_death), never a repr
    intentional: bool = False  # Ray ended it on request (ray.kill, exit_actor): maybe a stop


@dataclass(frozen=True)
class ReplicaExit:
    """A replica that ended since the last poll."""

    worker: str
    cause: str
    node_id: str | None = None

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {"worker": self.worker, "cause": self.cause}
        if self.node_id:
            out["node_id"] = self.node_id
        return out


@dataclass(frozen=True)
class WorkerChanges:
    """One poll's result: the `/monitor/worker` view and the replicas that just ended."""

    view: dict[str, dict[str, Any]]
    dead: list[ReplicaExit]
    stopped: list[ReplicaExit]

    def events(self) -> list[tuple[EventKind, dict[str, Any]]]:
        """The events to record: `replica_dead` for deaths, `replica_stopped` for stops."""
        return [(EventKind.REPLICA_DEAD, r.fields()) for r in self.dead] + [
            (EventKind.REPLICA_STOPPED, r.fields()) for r in self.stopped
        ]


def heartbeat_is_fresh(last_ts: float | None, now: float, stale_after_s: float) -> bool:
    """True when a heartbeat written at `last_ts` is at most `stale_after_s` old."""
    return last_ts is not None and now - last_ts <= stale_after_s


def beat_ts(beat: Mapping[str, Any] | None) -> float | None:
    """The `ts` of a heartbeat, or None when it has none that reads as a number."""
    if beat is None:
        return None
    try:
        return float(beat["ts"])
    except (KeyError, TypeError, ValueError):
        return None


@dataclass
class WorkerBook:
    """Joins replica states with heartbeats; remembers ended replicas for `dead_ttl_s`.

    Statuses: `health`, `stale` (heartbeat older than `stale_after_s`), `starting` (alive, no
    heartbeat yet), `dead` (ended unexpectedly, with `cause`) and `stopped` (ended by Serve
    on purpose: scale-down, redeploy, shutdown). Replicas that were already gone when the
    book first looked are shown but not reported as news, so a restarted monitor does not
    repeat old deaths.
    """

    stale_after_s: float
    dead_ttl_s: float
    ended_since: dict[str, float] = field(default_factory=dict)
    last_status: dict[str, str] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)
    last: dict[str, dict[str, Any]] = field(default_factory=dict)
    primed: bool = False

    @property
    def dead_since(self) -> dict[str, float]:
        return self.ended_since

    def observe(
        self,
        replicas: list[ReplicaState],
        heartbeats: Mapping[str, Mapping[str, Any]],
        now: float | None = None,
    ) -> WorkerChanges:
        """The view for this poll and the replicas that died or stopped since the last."""
        now = time.time() if now is None else now
        view: dict[str, dict[str, Any]] = {}
        dead: list[ReplicaExit] = []
        stopped: list[ReplicaExit] = []
        for rep in replicas:
            beat = heartbeats.get(rep.worker)
            if rep.state == "DEAD":
                entry = self._ended(rep, now, dead, stopped)
                if entry is None:
                    continue
            else:
                entry = self._alive(rep.worker, beat, now)
            if rep.node_id:
                entry["node_id"] = rep.node_id
            view[rep.worker] = entry
        present = {rep.worker for rep in replicas}
        for book in (self.ended_since, self.last_status, self.problems):
            for gone in set(book) - present:
                del book[gone]
        self.primed = True
        self.last = view
        return WorkerChanges(view, dead, stopped)

    def update(
        self,
        replicas: list[ReplicaState],
        heartbeats: Mapping[str, Mapping[str, Any]],
        now: float | None = None,
    ) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """The `/monitor/worker` view and the workers that newly died (not stopped)."""
        changes = self.observe(replicas, heartbeats, now)
        return changes.view, [r.worker for r in changes.dead]

    def _alive(self, worker: str, beat: Mapping[str, Any] | None, now: float) -> dict[str, Any]:
        entry: dict[str, Any]
        if beat is None and self.last_status.get(worker) in ("health", "stale"):
            entry = {"status": "stale"}  # it did beat, and its last beat has expired
        elif beat is None:
            entry = {"status": "starting"}
        elif heartbeat_is_fresh(beat_ts(beat), now, self.stale_after_s):
            entry = {"status": "health", "metrics": dict(beat)}
        else:
            entry = {"status": "stale", "metrics": dict(beat)}
        if beat is not None and beat.get("healthy") is False:
            self.problems[worker] = str(beat.get("problem") or "")
        else:
            self.problems.pop(worker, None)
        self.last_status[worker] = entry["status"]
        return entry

    def _ended(
        self,
        rep: ReplicaState,
        now: float,
        dead: list[ReplicaExit],
        stopped: list[ReplicaExit],
    ) -> dict[str, Any] | None:
        status, cause = self._judge(rep)
        if rep.worker not in self.ended_since:
            self.ended_since[rep.worker] = now
            if self.primed:
                exit_ = ReplicaExit(rep.worker, cause, rep.node_id)
                (stopped if status == "stopped" else dead).append(exit_)
            self.last_status[rep.worker] = status
        if now - self.ended_since[rep.worker] > self.dead_ttl_s:
            return None
        return {"status": self.last_status.get(rep.worker, status), "cause": cause}

    def _judge(self, rep: ReplicaState) -> tuple[str, str]:
        """`stopped` or `dead`, with the cause to show."""
        cause = rep.death_cause or "ended; Ray gave no reason"
        if not rep.intentional:
            return "dead", cause
        previous = self.last_status.get(rep.worker)
        if previous in ("dead", "stopped"):
            return previous, cause
        problem = self.problems.get(rep.worker)
        if problem is not None:
            return "dead", f"{HEALTH_CHECK_CAUSE}: {problem}" if problem else HEALTH_CHECK_CAUSE
        if previous == "stale":
            return "dead", f"{HEALTH_CHECK_CAUSE} (its heartbeat had stopped)"
        return "stopped", cause


# ---- death causes: Ray's ActorDeathCause dict -> a sentence ----


def describe_death(death_cause: Mapping[str, Any] | None) -> Death:
    """A sentence a person understands for a dead actor, and whether Ray ended it on request.

    `death_cause` is `ActorState.death_cause` from `ray.util.state.list_actors(detail=True)`.
    """
    if not death_cause:
        return Death("ended; Ray gave no reason")
    if "oom_context" in death_cause:
        return Death("out of memory: Ray's memory monitor killed it")
    if "creation_task_failure_context" in death_cause:
        ctx = death_cause["creation_task_failure_context"] or {}
        detail = short_detail(str(ctx.get("formatted_exception_string") or ""))
        return Death(f"failed to start: {detail}" if detail else "failed to start")
    if "runtime_env_failed_context" in death_cause:
        ctx = death_cause["runtime_env_failed_context"] or {}
        detail = short_detail(str(ctx.get("error_message") or ""))
        return Death(_with_detail("its runtime environment could not be set up", detail))
    if "actor_unschedulable_context" in death_cause:
        ctx = death_cause["actor_unschedulable_context"] or {}
        detail = short_detail(str(ctx.get("error_message") or ""))
        return Death(_with_detail("it could not be scheduled on any node", detail))
    ctx = death_cause.get("actor_died_error_context")
    if isinstance(ctx, Mapping):
        return _describe_died(ctx)
    return Death("ended; Ray gave no reason")


def _describe_died(ctx: Mapping[str, Any]) -> Death:
    reason = str(ctx.get("reason") or "UNSPECIFIED")
    message = str(ctx.get("error_message") or "")
    if reason == "RAY_KILL":
        return Death("stopped with ray.kill (Serve scale-down, redeploy or shutdown)", True)
    if reason in ("OUT_OF_SCOPE", "REF_DELETED"):
        return Death("stopped: nothing referred to it any more", True)
    if reason == "NODE_DIED":
        info = ctx.get("node_death_info")
        return Death(describe_node_loss(info if isinstance(info, Mapping) else {}))
    if reason == "OWNER_DIED":
        return Death("stopped because the process that owned it (the Serve controller) died")
    if reason == "WORKER_DIED":
        return _describe_worker_exit(message)
    detail = short_detail(message)
    return Death(_with_detail("ended", detail) if detail else "ended; Ray gave no reason")


_EXIT = re.compile(r"Worker exit type:\s*(\w+)(?:\s*Worker exit detail:\s*(.*))?", re.S)


def _describe_worker_exit(message: str) -> Death:
    match = _EXIT.search(message)
    exit_type = match.group(1) if match else ""
    detail = (match.group(2) or "") if match else message
    if exit_type in ("INTENDED_USER_EXIT", "INTENDED_SYSTEM_EXIT"):
        return Death("exited on request", True)
    if exit_type == "NODE_OUT_OF_MEMORY":
        return Death("out of memory: Ray's memory monitor killed it")
    lowered = detail.lower()
    if exit_type == "SYSTEM_ERROR" and (
        "connection error" in lowered or "sigkill" in lowered or "end of file" in lowered
    ):
        return Death("killed: its process ended abruptly (SIGKILL, the OOM killer or a crash)")
    short = short_detail(detail)
    return Death(_with_detail("exited with an error", short) if short else "its process exited")


def describe_node_loss(death_info: Mapping[str, Any]) -> str:
    """A sentence for an actor whose node went away (`NodeDeathInfo` as a dict)."""
    reason = str(death_info.get("reason") or "")
    detail = short_detail(str(death_info.get("reason_message") or ""))
    base = {
        "AUTOSCALER_DRAIN_PREEMPTED": "its node was lost: the cloud reclaimed it (preemption)",
        "EXPECTED_TERMINATION": "its node was shut down",
        "AUTOSCALER_DRAIN_IDLE": "its node was removed as idle",
    }.get(reason, "its node was lost")
    return _with_detail(base, detail)


def describe_node_exit(state_message: str | None) -> Death:
    """A dead node's `NodeState.state_message` as a sentence; idle or planned ends are stops."""
    message = (state_message or "").strip()
    prefixes = [
        ("Terminated due to idle", "removed by the autoscaler as idle", True),
        ("Expected termination", "shut down on purpose", True),
        ("Terminated due to preemption", "lost: the cloud reclaimed it (preemption)", False),
        ("Unexpected termination", "lost unexpectedly", False),
    ]
    for prefix, sentence, intentional in prefixes:
        if message.startswith(prefix):
            rest = short_detail(message[len(prefix) :].lstrip(" :()"))
            return Death(_with_detail(sentence, rest), intentional)
    detail = short_detail(message)
    return Death(_with_detail("lost", detail) if detail else "lost; Ray gave no reason")


def short_detail(text: str) -> str:
    """One readable line of an error text: a traceback's last line, else its first line."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return ""
    line = lines[-1] if any(ln.startswith("Traceback") for ln in lines) else lines[0]
    line = " ".join(line.split())
    if len(line) > _MAX_DETAIL_CHARS:
        line = line[: _MAX_DETAIL_CHARS - 3].rstrip() + "..."
    return line


def _with_detail(sentence: str, detail: str) -> str:
    return f"{sentence} ({detail})" if detail else sentence


@dataclass(frozen=True)
class NodeExit:
    """A dead Ray node: `node_stopped` when it ended on purpose, `node_dead` otherwise."""

    node_id: str
    cause: str
    intentional: bool

    def event(self) -> tuple[EventKind, dict[str, Any]]:
        kind = EventKind.NODE_STOPPED if self.intentional else EventKind.NODE_DEAD
        return kind, {"node_id": self.node_id, "cause": self.cause}


def replica_from_row(row: Mapping[str, Any]) -> ReplicaState:
    """One `list_actors(detail=True)` row (as a dict) as a ReplicaState."""
    name = str(row.get("name") or "")
    tag = replica_tag_of(name) or str(row.get("actor_id") or "unknown")
    state = str(row.get("state") or "")
    cause = row.get("death_cause")
    death = describe_death(cause if isinstance(cause, Mapping) else None)
    dead = state == "DEAD"
    return ReplicaState(
        worker_id(tag),
        state,
        row.get("node_id"),
        death.cause if dead else None,
        death.intentional if dead else False,
    )


def node_exit_from_row(row: Mapping[str, Any]) -> NodeExit:
    """One dead node of `list_nodes()` (as a dict) as a NodeExit."""
    death = describe_node_exit(row.get("state_message"))
    return NodeExit(str(row.get("node_id") or ""), death.cause, death.intentional)


# ---- the state API (needs a running Ray with its dashboard) ----


def list_embedder_replicas(app_name: str, deployment: str = EMBEDDER) -> list[ReplicaState]:
    """Embedder replica actors from Ray's state API."""
    from ray.util.state import list_actors

    actors = list_actors(
        address=_gcs_address(),
        filters=[("class_name", "=", replica_class_name(app_name, deployment))],
        limit=1000,
        detail=True,
        raise_on_missing_output=False,
    )
    return [replica_from_row(_as_dict(actor)) for actor in actors]


def list_node_exits() -> list[NodeExit]:
    """Every dead node, with why it ended."""
    from ray.util.state import list_nodes

    nodes = list_nodes(
        address=_gcs_address(),
        filters=[("state", "=", "DEAD")],
        limit=1000,
        raise_on_missing_output=False,
    )
    return [node_exit_from_row(_as_dict(n)) for n in nodes]


def list_dead_nodes() -> list[str]:
    """The ids of every dead node."""
    return [n.node_id for n in list_node_exits()]


def _as_dict(row: Any) -> dict[str, Any]:
    if isinstance(row, Mapping):
        return dict(row)
    return {
        k: getattr(row, k)
        for k in ("name", "actor_id", "state", "node_id", "death_cause", "state_message")
        if hasattr(row, k)
    }


def _gcs_address() -> str | None:
    """This cluster's address, so other Ray instances on the machine never confuse the API."""
    import ray

    return ray.get_runtime_context().gcs_address if ray.is_initialized() else None


class Heartbeats(Protocol):
    def all(self) -> dict[str, dict[str, Any]]: ...


class LiveReplicas:
    """The batch size of each embedder replica with a fresh heartbeat (paces the dispatcher)."""

    def __init__(self, heartbeats: Heartbeats, stale_after_s: float) -> None:
        self.heartbeats = heartbeats
        self.stale_after_s = stale_after_s

    def batch_sizes(self) -> list[int]:
        now = time.time()
        return [
            int(beat["batch"])
            for beat in self.heartbeats.all().values()
            if isinstance(beat.get("batch"), int)
            and heartbeat_is_fresh(beat_ts(beat), now, self.stale_after_s)
        ]
