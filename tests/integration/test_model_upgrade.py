"""A model upgrade without re-upload or downtime (issue 17), with two tiny trained models.

The session's app is swapped for one of its own (own name, own key namespace, own actors)
running model A; a user uploads; the app is redeployed with model B (another architecture,
48-d vectors). The re-embedding job starts by itself; searches answer throughout; the job's
driver is killed midway and resumes; an upload made during the job stays searchable.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from lumen.config import Settings
from lumen.embedding import model_id_for
from lumen.keys import NEXT
from lumen.storage import Stores
from tests.conftest import ROOT, Service, admin_headers, service_settings
from tests.support.chaos import kill_app_actors
from tests.support.fake_gemini import FakeGemini
from tests.support.hostile import make_zip
from tests.support.http import search, status_snapshot, upload_zip, wait_healthy, wait_settled
from tests.support.tiny_clip import COLORS, MODEL_B, SHAPES, TinyClip, draw_shape, ensure_model
from tests.support.waiting import wait_until

APP = "lumen-upgrade"
PER_CLASS = 2  # 24 items: the job runs long enough (batches of 2, paused) to be killed midway
TOP_K = 6  # the late yellow triangle must rank among the 3 yellow triangles' neighbours


def _png(color: str, shape: str, seed: int) -> bytes:
    buf = io.BytesIO()
    draw_shape(color, shape, size=160, seed=seed).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class Upgrade:
    service: Service
    config_b: dict[str, Any]
    settings_b: Settings
    stores: Stores


@pytest.fixture(scope="module")
def upgrade(
    service: Service,
    tiny_clip: TinyClip,
    gemini: FakeGemini,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Upgrade]:
    """The session's app swapped for APP on model A, then back at the end."""
    from ray import serve

    from deploy import deploy, load_config

    overrides = service_settings(
        tmp_path_factory.mktemp("upgrade-data"), service.redis.url, tiny_clip, gemini
    )
    overrides["app_name"] = APP
    overrides["reindex"] = {"batch_size": 2, "batch_pause_s": 1.0}

    def config_for(model: dict[str, Any]) -> dict[str, Any]:
        config = load_config(ROOT / "configs" / "local.yaml", {**overrides, "model": model})
        config["http_options"] = service.config["http_options"]
        config["applications"][0]["name"] = APP
        return config

    model_b = ensure_model(MODEL_B).model_settings().model_dump()
    settings_b = Settings(**{**overrides, "model": model_b})
    serve.delete(service.config["applications"][0]["name"])
    try:
        deploy(config_for(overrides["model"]))
        wait_healthy(service.url)
        svc = Service(service.url, Settings(**overrides), service.redis, config_for({}))
        yield Upgrade(svc, config_for(model_b), settings_b, Stores(settings_b))
    finally:
        serve.delete(APP)
        kill_app_actors(settings_b)
        deploy(service.config)
        wait_healthy(service.url)


@dataclass
class Searcher:
    """Searches in a loop on a thread: every answer's status and top files are kept."""

    svc: Service
    headers: dict[str, str]
    late: str | None = None  # once set, every "a yellow triangle" search must find it
    answers: list[tuple[str, int, list[str]]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            for query in ("a red circle", "a yellow triangle"):
                r = search(self.svc, self.headers, query=query, top_k=TOP_K)
                files = [x["filename"] for x in r.json()["results"]] if r.status_code == 200 else []
                self.answers.append((query, r.status_code, files))
            time.sleep(0.2)


def _progress(svc: Service, admin: dict[str, str], user: str) -> dict[str, Any]:
    with svc.client() as c:
        r = c.get("/admin/reindex", headers=admin, params={"user": user})
        assert r.status_code == 200, r.text
        return dict(r.json()["users"].get(user) or {})


def test_an_upgrade_reembeds_in_the_background_without_a_gap(upgrade: Upgrade) -> None:
    import ray
    from ray.util.state import list_actors

    from actors.naming import NAMESPACE, reembedder_name
    from deploy import deploy

    svc, stores = upgrade.service, upgrade.stores
    user, h = svc.new_user("up")
    admin = admin_headers(svc)
    members = {
        f"{c}_{s}_{i}.png": _png(c, s, seed=i)
        for c in COLORS
        for s in SHAPES
        for i in range(PER_CLASS)
    }
    body = upload_zip(svc, h, make_zip(members)).json()
    wait_settled(svc, h, len(members))
    names = {q.rsplit("/", 1)[1].removesuffix(".png"): q for q in body["queued"]}
    model_a = stores.vectors.info(user)
    assert model_a is not None and model_a.dim == 64
    assert "reindex" not in status_snapshot(svc, h)  # nothing pending: no field

    deploy(upgrade.config_b)  # model B: the Embedder restarts, the ingress starts the job
    wait_healthy(svc.url)
    model_b = model_id_for(upgrade.settings_b.model)
    searcher = Searcher(svc, h)
    thread = threading.Thread(target=searcher.run, daemon=True)
    thread.start()
    try:
        # killed midway: the driver actor (and with it its Ray Data pool) dies after a few
        # batches; the restarted driver resumes from what the NEXT space holds
        wait_until(
            lambda: 4 <= _progress(svc, admin, user).get("done", 0) < len(members), 240,
            "the re-embedding to be partly done",
        )  # fmt: skip
        assert status_snapshot(svc, h)["reindex"]["state"] in ("pending", "running")
        driver = ray.get_actor(reembedder_name(APP), namespace=NAMESPACE)
        ray.kill(driver, no_restart=False)

        late = upload_zip(svc, h, make_zip({"late.png": _png("yellow", "triangle", 77)}))
        [late_item] = late.json()["queued"]
        wait_settled(svc, h, len(members) + 1)
        searcher.late = late_item
        r = search(svc, h, query="a yellow triangle", top_k=TOP_K)
        assert late_item in [x["filename"] for x in r.json()["results"]]  # before the switch

        wait_until(
            lambda: _progress(svc, admin, user).get("state") == "switched", 300,
            "the switch to model B",
        )  # fmt: skip
        time.sleep(2)  # a few searches after the switch
    finally:
        searcher.stop.set()
        thread.join(60)

    statuses = {code for _, code, _ in searcher.answers}
    assert statuses == {200}, [a for a in searcher.answers if a[1] != 200][:5]
    assert len(searcher.answers) > 10
    for query, _, files in searcher.answers:
        if query == "a red circle":
            assert files[0] in (names["red_circle_0"], names["red_circle_1"]), files
    seen_late = [i for i, (q, _, f) in enumerate(searcher.answers) if late_item in f]
    assert seen_late, "the late upload never showed up in a search"
    after = [f for q, _, f in searcher.answers[seen_late[0] :] if q == "a yellow triangle"]
    assert all(late_item in f for f in after), "the late upload went missing from a search"

    # after the switch: B's space, every done item exactly once, nothing left behind
    info = stores.vectors.info(user)
    assert info is not None and (info.model, info.dim) == (model_b, 48)
    done = stores.spaces.done_items(user)
    assert len(done) == len(members) + 1
    assert stores.vectors.count(user) == len(done)
    vids = stores.vectors.ids_for(user, done)
    assert None not in vids and len(set(vids)) == len(done)
    assert stores.redis.exists(stores.keys.vinfo(user, NEXT), stores.keys.vid(user, NEXT)) == 0
    r = search(svc, h, query="a red circle", top_k=2)
    assert r.json()["results"][0]["filename"] in (names["red_circle_0"], names["red_circle_1"])
    assert "reindex" not in status_snapshot(svc, h)  # done: the field is gone

    def pool_released() -> bool:  # the Ray Data actor pool holds no CPU after the job
        alive = list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
        return not [a for a in alive if "MapWorker" in (a.class_name or "")]

    wait_until(pool_released, 60, "the re-embedding actor pool to be released")


def test_a_deploy_with_no_space_on_another_model_starts_nothing(
    upgrade: Upgrade, tmp_path: Path
) -> None:
    """The ingress's check finds every space on the deployed model: no job, no actor."""
    from lumen.upgrade import upgrade_pending

    model_b = model_id_for(upgrade.settings_b.model)
    assert not upgrade_pending(upgrade.stores.spaces, model_b)


def test_an_upgrade_to_a_model_that_cannot_load_is_refused_and_the_old_one_keeps_serving(
    upgrade: Upgrade, tmp_path: Path
) -> None:
    """The run command checks the new model before deploying (test_deploy.py covers the
    messages); here the refused upgrade leaves the running app and its spaces as they were."""
    import copy
    import os

    from deploy import check_app_model

    garbage = tmp_path / "broken.safetensors"
    garbage.write_bytes(os.urandom(4096))
    broken = copy.deepcopy(upgrade.config_b)
    broken["applications"][0]["args"]["settings"]["model"]["checkpoint"] = str(garbage)
    with pytest.raises(SystemExit, match="cannot load its model"):
        check_app_model(broken)
    svc = upgrade.service
    user, h = svc.new_user("keep")
    upload_zip(svc, h, make_zip({"red.png": _png("red", "circle", 5)}))
    wait_settled(svc, h, 1)
    r = search(svc, h, query="a red circle", top_k=1)
    assert r.status_code == 200 and r.json()["results"][0]["filename"].endswith("red.png")
    info = upgrade.stores.vectors.info(user)
    assert info is not None and info.model == model_id_for(upgrade.settings_b.model)
