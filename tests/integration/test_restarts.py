"""Restarts lose nothing: Redis (AOF), the Serve app, the whole Ray instance.

Marked `restarts`: `tests/conftest.py` runs it after every other test (it restarts what they share).
"""

from __future__ import annotations

import io

import pytest
import ray
from ray import serve

from deploy import deploy, free_port, start_ray
from tests.conftest import Service
from tests.support.hostile import make_jpeg, make_zip
from tests.support.http import search, status_snapshot, upload_zip, wait_healthy, wait_settled
from tests.support.tiny_clip import COLORS, SHAPES, draw_shape

PASSWORD = "correct horse"


def _png(color: str, shape: str) -> bytes:
    buf = io.BytesIO()
    draw_shape(color, shape, size=160, seed=3).save(buf, format="PNG")
    return buf.getvalue()


def _login(service: Service, user: str) -> dict[str, str]:
    with service.client() as c:
        r = c.post("/login", data={"username": user, "password": PASSWORD})
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {r.json()['access_token']}"}


def _results(service: Service, h: dict[str, str]) -> list[object]:
    out = []
    for query in ("a red circle", "a blue square", "a yellow triangle"):
        r = search(service, h, query=query, top_k=12)
        assert r.status_code == 200, r.text
        out.append([(x["filename"], round(x["similarity"], 5)) for x in r.json()["results"]])
    r = search(service, h, image=_png("green", "circle"), top_k=3)
    out.append([(x["filename"], round(x["similarity"], 5)) for x in r.json()["results"]])
    return out


@pytest.mark.restarts
def test_every_acknowledged_upload_survives_redis_being_killed(service: Service) -> None:
    user, h = service.new_user("ack")
    acknowledged: list[str] = []
    for batch in range(10):  # 200 images in 10 uploads, each answered 200 before the kill
        members = {f"b{batch}_{i}.jpg": make_jpeg((batch * 20, i * 12, 90)) for i in range(20)}
        r = upload_zip(service, h, make_zip(members))
        assert r.status_code == 200, r.text
        acknowledged += r.json()["queued"]
    assert len(acknowledged) == 200
    service.redis.crash_and_restart()
    status = status_snapshot(service, h)
    seen = set(status["queued_items"]) | set(status["processing"]) | set(status["done"])
    assert seen | set(status["errors"]) >= set(acknowledged)
    final = wait_settled(service, h, 200, timeout_s=300)
    assert sorted(final["done"]) == sorted(acknowledged)


@pytest.mark.restarts
def test_users_items_and_search_results_survive_every_restart(service: Service) -> None:
    user, h = service.new_user("durable")
    members = {f"{c}_{s}.png": _png(c, s) for c in COLORS for s in SHAPES}
    upload_zip(service, h, make_zip(members))
    wait_settled(service, h, len(members))
    before = _results(service, h)
    with service.client() as c:
        done_before = c.get("/done", headers=h).json()

    service.redis.restart()  # Redis with AOF
    h = _login(service, user)
    assert _results(service, h) == before

    serve.delete(service.config["applications"][0]["name"])  # the Serve app
    deploy(service.config)
    wait_healthy(service.url)
    h = _login(service, user)
    assert _results(service, h) == before

    serve.shutdown()  # the whole Ray instance
    ray.shutdown()
    start_ray(num_cpus=4, dashboard_port=free_port())
    deploy(service.config)
    wait_healthy(service.url)
    h = _login(service, user)  # tokens and users survive too
    assert _results(service, h) == before
    with service.client() as c:
        assert c.get("/done", headers=h).json() == done_before
