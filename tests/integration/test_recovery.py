"""Nothing stuck: failed items can be retried, deleted, or requeued by uploading them again."""

from __future__ import annotations

from pathlib import Path

from lumen.paths import resolve_item
from tests.conftest import Service
from tests.support.hostile import corrupt_jpeg, make_jpeg, make_zip
from tests.support.http import search, upload_zip, wait_settled


def _failed_upload(service: Service, h: dict[str, str], user: str, names: list[str]) -> list[str]:
    """Upload images that pass the header check and fail to decode; their items, errored."""
    members = {n: corrupt_jpeg()[: -i - 1] for i, n in enumerate(names)}  # distinct bytes
    r = upload_zip(service, h, make_zip(members))
    assert r.status_code == 200, r.text
    items = r.json()["queued"]
    final = wait_settled(service, h, len(items))
    assert sorted(final["errors"]) == sorted(items)
    return items


def _file(service: Service, user: str, item: str) -> Path:
    return resolve_item(service.settings.data_dir, user, item)


def test_a_failed_item_retried_with_a_fresh_budget_can_then_succeed(service: Service) -> None:
    user, h = service.new_user("retry")
    [item] = _failed_upload(service, h, user, ["broken.jpg"])
    good = make_jpeg((10, 200, 30), size=(96, 96))
    _file(service, user, item).write_bytes(good)  # the cause is gone (e.g. storage repaired)
    with service.client() as c:
        r = c.post(f"/queue/{item}/retry", headers=h)
        assert r.status_code == 200, r.text
        assert r.json()["requeued"] == [item]
    final = wait_settled(service, h, 1)
    assert final["done"] == [item] and final["errors"] == {}
    hits = search(service, h, image=good, top_k=1).json()["results"]
    assert hits[0]["filename"] == item
    with service.client() as c:  # a done item is not failed: nothing to retry
        r = c.post(f"/queue/{item}/retry", headers=h)
        assert r.status_code == 409 and r.json()["code"] == "conflict"
        assert c.post("/queue/uploads/nobody/x.jpg/retry", headers=h).status_code == 404


def test_retrying_every_error_requeues_each_with_a_fresh_retry_count(service: Service) -> None:
    user, h = service.new_user("retryall")
    items = _failed_upload(service, h, user, ["a.jpg", "b.jpg"])
    with service.client() as c:
        r = c.post("/queue/retry-errors", headers=h)
        assert r.status_code == 200, r.text
        assert sorted(r.json()["requeued"]) == sorted(items)
    final = wait_settled(service, h, 2)  # still corrupt: they fail again, once each
    assert sorted(final["errors"]) == sorted(items)
    assert all(final["retries"][i] == "1" for i in items)


def test_deleting_a_failed_item_removes_it_and_its_file(service: Service) -> None:
    user, h = service.new_user("delfail")
    [item] = _failed_upload(service, h, user, ["gone.jpg"])
    assert _file(service, user, item).exists()
    with service.client() as c:
        r = c.delete(f"/queue/{item}", headers=h)
        assert r.status_code == 200, r.text
        assert c.delete(f"/queue/{item}", headers=h).status_code == 404
        usage = c.get("/usage", headers=h).json()
    assert not _file(service, user, item).exists()
    assert usage == {**usage, "items": 0, "bytes": 0}
    final = wait_settled(service, h, 0)
    assert final["errors"] == {} and final["retries"] == {}


def test_uploading_the_same_bytes_as_a_failed_item_requeues_it(service: Service) -> None:
    user, h = service.new_user("reupload")
    data = corrupt_jpeg()
    r = upload_zip(service, h, make_zip({"first.jpg": data}))
    [item] = r.json()["queued"]
    wait_settled(service, h, 1)
    _file(service, user, item).write_bytes(make_jpeg((1, 2, 3)))  # then repaired, as above
    r = upload_zip(service, h, make_zip({"again.jpg": data}))
    assert r.status_code == 200, r.text
    assert r.json()["queued"] == [item]  # the errored item is queued again, under its name
    assert len(list(_file(service, user, item).parent.iterdir())) == 1  # no second copy
    final = wait_settled(service, h, 1)
    assert final["done"] == [item] and final["errors"] == {}
