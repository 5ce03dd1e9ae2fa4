"""Readiness: what the service needs to do its work, what is missing, and what a user waits on.

Liveness (`/healthz`) says the ingress answers; readiness (`/readyz`) says work would get
done: Redis answers, the dispatchers and index shards answer, and an Embedder replica runs
or can start. Pure: the ingress gathers the facts (Serve's deployment status as a dict,
pings) and these functions decide.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

WAITING_FOR_WORKER = "waiting for a worker to start"
# Serve's deployment statuses in which its replicas keep failing to start.
FAILED_STATUSES = frozenset({"UNHEALTHY", "DEPLOY_FAILED"})
STARTING_STATES = ("STARTING", "UPDATING", "RECOVERING")
MAX_REASON_CHARS = 600  # room for a path and the command to run
RUNNING_STATES = ("RUNNING", "PENDING_MIGRATION")  # the latter still serves, on a draining node


def error_line(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """The line of an error text that says what went wrong: a traceback's last line (its
    exception), else the first line; bounded."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return ""
    line = lines[-1] if any(ln.startswith("Traceback") for ln in lines) else lines[0]
    line = " ".join(line.split())
    return line if len(line) <= limit else line[: limit - 3].rstrip() + "..."


@dataclass(frozen=True)
class EmbedderState:
    """The Embedder deployment as Serve reports it."""

    deployed: bool
    running: int = 0
    starting: int = 0
    status: str = ""
    message: str = ""

    @property
    def failing(self) -> bool:
        """No replica runs and Serve says its replicas fail to start."""
        return self.running == 0 and self.status in FAILED_STATUSES

    def problem(self) -> str | None:
        """Why no Embedder can run now, or None when one runs or can start on demand."""
        if not self.deployed:
            return "the Embedder is not deployed"
        if self.running:
            return None
        if self.failing:
            detail = error_line(self.message)
            return (
                f"no Embedder replica can start: {detail}"
                if detail
                else (f"no Embedder replica can start (Serve reports {self.status})")
            )
        if self.starting:
            return f"no Embedder replica is running yet ({self.starting} starting)"
        return None  # scaled to zero: a replica starts when work arrives

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ok": self.problem() is None,
            "running": self.running,
            "starting": self.starting,
            "status": self.status or "missing",
        }
        if not self.running and not self.starting and self.deployed and not self.failing:
            out["note"] = "scaled to zero: a replica starts when work arrives"
        if self.message:
            out["message"] = error_line(self.message)
        return out


def embedder_state(deployment: Mapping[str, Any] | None) -> EmbedderState:
    """An EmbedderState from Serve's deployment status (`DeploymentStatusOverview` as a dict)."""
    if deployment is None:
        return EmbedderState(deployed=False)
    replicas = deployment.get("replica_states") or {}
    return EmbedderState(
        deployed=True,
        running=sum(int(replicas.get(s, 0)) for s in RUNNING_STATES),
        starting=sum(int(replicas.get(s, 0)) for s in STARTING_STATES),
        status=str(deployment.get("status") or ""),
        message=str(deployment.get("message") or ""),
    )


@dataclass(frozen=True)
class Readiness:
    """One readiness answer: each part's state, and the reasons the service is not ready."""

    redis: bool
    dispatchers: tuple[bool, ...]
    shards: tuple[bool, ...]
    embedder: EmbedderState

    def reasons(self) -> list[str]:
        out = [] if self.redis else ["Redis does not answer"]
        down = [str(n) for n, ok in enumerate(self.dispatchers) if not ok]
        if down:
            out.append(f"dispatcher {', '.join(down)} does not answer")
        down = [str(n) for n, ok in enumerate(self.shards) if not ok]
        if down:
            out.append(f"index shard {', '.join(down)} does not answer")
        problem = self.embedder.problem()
        if problem:
            out.append(problem)
        return out

    @property
    def ready(self) -> bool:
        return not self.reasons()

    def body(self) -> dict[str, Any]:
        """The `/readyz` payload."""
        reasons = self.reasons()
        return {
            "status": "ready" if not reasons else "not ready",
            "reasons": reasons,
            "redis": self.redis,
            "dispatchers": {"answering": sum(self.dispatchers), "total": len(self.dispatchers)},
            "shards": {"answering": sum(self.shards), "total": len(self.shards)},
            "embedder": self.embedder.fields(),
        }


def pending_items(status: Mapping[str, Any]) -> int:
    """Items of a `/status` payload that still need an Embedder (queued or processing)."""
    return int(status.get("queue") or 0) + len(status.get("processing") or [])


def waiting_reason(status: Mapping[str, Any], embedder: EmbedderState) -> str | None:
    """What a user's pending items wait on when no Embedder replica runs, else None."""
    if pending_items(status) == 0 or embedder.running:
        return None
    if embedder.failing or not embedder.deployed:
        return f"{WAITING_FOR_WORKER}, but it cannot: {embedder.problem()}"
    return WAITING_FOR_WORKER
