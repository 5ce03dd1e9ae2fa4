"""Readiness apart from liveness, and `/status` saying what queued items wait on.

The Embedder is taken down by redeploying it scaled to zero and pinned to a custom resource
no node has: Serve scales it up when work arrives but can never place the replica, so the
"no replica runs" state lasts until the test redeploys the session's own config.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from lumen.readiness import WAITING_FOR_WORKER
from tests.conftest import Service
from tests.support.hostile import make_png, make_zip
from tests.support.http import sse_events, upload_zip, wait_settled
from tests.support.waiting import wait_until

GATE = "lumen_test_gate_no_node_has"


def readyz(service: Service) -> httpx.Response:
    with service.client() as c:
        return c.get("/readyz")


def scaled_to_zero(service: Service) -> bool:
    embedder = readyz(service).json()["embedder"]
    return bool(embedder["running"] == 0 and embedder["starting"] == 0)


def gated_config(config: dict[str, Any]) -> dict[str, Any]:
    """`config` with the Embedder scaled to zero and unplaceable (min_replicas: 0)."""
    gated = copy.deepcopy(config)
    for dep in gated["applications"][0]["deployments"]:
        if dep["name"] == "Embedder":
            dep["autoscaling_config"].update(
                min_replicas=0, initial_replicas=0, max_replicas=1, upscale_delay_s=0
            )
            dep["ray_actor_options"] = {**dep["ray_actor_options"], "resources": {GATE: 1}}
    return gated


def first_snapshot_with(
    service: Service, headers: dict[str, str], key: str, timeout_s: float = 60
) -> dict[str, Any]:
    """The first `/status` snapshot that has `key`; fails after `timeout_s`."""
    give_up = time.monotonic() + timeout_s
    for snapshot in sse_events(service, "/status", headers):
        if key in snapshot:
            return dict(snapshot)
        if time.monotonic() > give_up:
            break
    raise AssertionError(f"no /status snapshot had {key!r} within {timeout_s} s")


@pytest.fixture
def embedder_down(service: Service) -> Iterator[None]:
    from deploy import deploy

    deploy(gated_config(service.config))
    yield
    deploy(service.config)
    wait_until(lambda: readyz(service).status_code == 200, 180, "the Embedder to run again")


def test_readyz_names_every_part_and_is_200_while_an_embedder_runs(service: Service) -> None:
    r = wait_until(lambda: (r := readyz(service)).status_code == 200 and r, 120, "ready")
    body = r.json()
    assert body["status"] == "ready" and body["reasons"] == []
    assert body["redis"] is True
    assert body["embedder"]["running"] >= 1
    assert body["dispatchers"]["answering"] == body["dispatchers"]["total"] >= 1
    assert body["shards"]["answering"] == body["shards"]["total"] >= 1
    with service.client() as c:
        assert c.get("/healthz").json() == {"status": "ok", "redis": True}


@pytest.mark.restarts
def test_queued_items_say_they_wait_for_a_worker_and_readiness_follows_the_embedder(
    service: Service, embedder_down: None
) -> None:
    wait_until(lambda: scaled_to_zero(service), 120, "the Embedder to scale to zero")
    r = readyz(service)
    assert r.status_code == 200, r.text  # scaled to zero is ready: work starts a replica
    assert "scaled to zero" in r.json()["embedder"]["note"]

    _, h = service.new_user("wait")
    up = upload_zip(service, h, make_zip({"a.png": make_png()}))
    assert up.status_code == 200, up.text
    snapshot = first_snapshot_with(service, h, "waiting_for_worker")
    assert snapshot["waiting_for_worker"] == WAITING_FOR_WORKER
    assert snapshot["queue"] + len(snapshot["processing"]) == 1

    def not_ready() -> dict[str, Any] | None:
        r = readyz(service)
        return r.json() if r.status_code == 503 else None

    body = wait_until(not_ready, 120, "readiness to fail while the replica cannot start")
    assert body["status"] == "not ready" and body["embedder"]["running"] == 0
    assert any("no Embedder replica is running" in reason for reason in body["reasons"])

    from deploy import deploy

    deploy(service.config)  # the replica can start again
    wait_until(lambda: readyz(service).status_code == 200, 180, "readiness once it runs")
    final = wait_settled(service, h, expected_done=1)
    assert len(final["done"]) == 1 and "waiting_for_worker" not in final
