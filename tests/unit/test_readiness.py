"""Readiness and the `/status` waiting reason, decided from Serve's status and pings."""

from __future__ import annotations

from typing import Any

from lumen.cli import run
from lumen.readiness import WAITING_FOR_WORKER, Readiness, embedder_state, waiting_reason
from tests.unit.test_cli import FakeLumen, sse, status

RUNNING = embedder_state({"status": "HEALTHY", "replica_states": {"RUNNING": 2}})
SCALED_TO_ZERO = embedder_state({"status": "HEALTHY", "replica_states": {}})
STARTING = embedder_state({"status": "UPSCALING", "replica_states": {"STARTING": 1}})
FAILING = embedder_state(
    {
        "status": "UNHEALTHY",
        "replica_states": {"STARTING": 1},
        "message": "Traceback (most recent call last):\n  ...\n"
        "FileNotFoundError: model checkpoint not found: /x.pt (set LUMEN_MODEL__CHECKPOINT)",
    }
)


def ready(embedder=RUNNING, redis=True, dispatchers=(True,), shards=(True, True)) -> Readiness:  # type: ignore[no-untyped-def]
    return Readiness(redis, tuple(dispatchers), tuple(shards), embedder)


def test_ready_when_everything_answers_and_a_replica_runs() -> None:
    body = ready().body()
    assert ready().ready and body["status"] == "ready" and body["reasons"] == []
    assert body["embedder"]["running"] == 2
    assert body["shards"] == {"answering": 2, "total": 2}


def test_each_missing_part_is_named() -> None:
    r = ready(redis=False, dispatchers=(False,), shards=(True, False), embedder=STARTING)
    assert not r.ready
    assert r.reasons() == [
        "Redis does not answer",
        "dispatcher 0 does not answer",
        "index shard 1 does not answer",
        "no Embedder replica is running yet (1 starting)",
    ]


def test_an_embedder_that_cannot_start_is_not_ready_with_its_error() -> None:
    (reason,) = ready(embedder=FAILING).reasons()
    assert reason.startswith("no Embedder replica can start: FileNotFoundError")
    assert "LUMEN_MODEL__CHECKPOINT" in reason
    assert ready(embedder=embedder_state(None)).reasons() == ["the Embedder is not deployed"]


def test_scaled_to_zero_is_ready_and_says_so() -> None:
    r = ready(embedder=SCALED_TO_ZERO)
    assert r.ready
    assert "scaled to zero" in r.body()["embedder"]["note"]


def test_waiting_reason_only_while_items_wait_and_no_replica_runs() -> None:
    queued = {"queue": 3, "processing": []}
    assert waiting_reason(queued, SCALED_TO_ZERO) == WAITING_FOR_WORKER
    assert waiting_reason(queued, STARTING) == WAITING_FOR_WORKER
    assert waiting_reason({"queue": 0, "processing": ["a"]}, STARTING) == WAITING_FOR_WORKER
    assert waiting_reason(queued, RUNNING) is None
    assert waiting_reason({"queue": 0, "processing": []}, SCALED_TO_ZERO) is None
    failing = waiting_reason(queued, FAILING) or ""
    assert failing.startswith(f"{WAITING_FOR_WORKER}, but it cannot: no Embedder replica")


def test_cli_status_shows_what_the_queue_waits_on(capsys: Any) -> None:
    snap = {**status(queue=3), "waiting_for_worker": WAITING_FOR_WORKER}
    fake = FakeLumen({("GET", "/status"): sse(snap)})
    assert run(["status"], fake.client()) == 0
    assert f"queued 3  processing 0  errors 0  ({WAITING_FOR_WORKER})" in capsys.readouterr().out
