"""Uploads through HTTP: every image kind, PDFs, the hostile corpus, queue control, /status."""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.conftest import Service
from tests.support.hostile import HOSTILE_CASES, make_heic, make_jpeg, make_pdf, make_png, make_zip
from tests.support.http import (
    sse_events,
    status_snapshot,
    upload_pdf,
    upload_zip,
    wait_settled,
)

DATA = Path(__file__).resolve().parents[1] / "data"


def _good_zip() -> bytes:
    return make_zip(
        {
            "a.jpg": make_jpeg((200, 30, 30)),
            "b.jpeg": make_jpeg((30, 200, 30)),
            "c.png": make_png((30, 30, 200)),
            "d.heic": make_heic((200, 200, 30)),
            "UPPER.JPG": make_jpeg((120, 20, 200)),
            "sub/dir/e.png": make_png((10, 120, 120)),
            "фото-日本.jpg": make_jpeg((90, 90, 90)),
            "__MACOSX/._a.jpg": b"junk",
            ".hidden.jpg": make_jpeg((1, 2, 3)),
        }
    )


def test_every_image_kind_is_queued_and_embedded(service: Service) -> None:
    user, h = service.new_user()
    r = upload_zip(service, h, _good_zip())
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["message"] == "Uploaded and queued 7 images."
    assert len(body["queued"]) == 7
    assert all(q.startswith(f"uploads/{user}/") for q in body["queued"])
    names = {q.rsplit("/", 1)[1] for q in body["queued"]}
    assert {"a.jpg", "b.jpeg", "c.png", "d.heic", "UPPER.jpg", "e.png"} <= names
    assert any("фото" in n for n in names)
    final = wait_settled(service, h, 7)
    assert sorted(final["done"]) == sorted(body["queued"]) and final["errors"] == {}
    with service.client() as c:
        done = c.get("/done", headers=h).json()["done_images"]
        assert sorted(done) == sorted(body["queued"])
        heic = next(q for q in body["queued"] if q.endswith(".heic"))
        img = c.get(f"/image/{heic}", headers=h)
        assert img.status_code == 200 and img.headers["content-type"] == "image/jpeg"
        assert img.content[:2] == b"\xff\xd8"


def test_same_images_uploaded_again_are_renamed_or_reported_as_duplicates(
    service: Service,
) -> None:
    _, h = service.new_user()
    first = upload_zip(service, h, make_zip({"x.jpg": make_jpeg((1, 100, 1))})).json()
    again = upload_zip(service, h, make_zip({"x.jpg": make_jpeg((1, 100, 1))})).json()
    other = upload_zip(service, h, make_zip({"x.jpg": make_jpeg((100, 1, 1))})).json()
    assert len(first["queued"]) == 1 and again["queued"] == []
    assert again["message"] == "Uploaded and queued 0 images."
    assert list(again["duplicates"].values()) == first["queued"]
    assert other["queued"][0].endswith("x_1.jpg")  # a new file never overwrites the old one


def test_a_real_multi_page_pdf_is_rendered_page_by_page(service: Service) -> None:
    user, h = service.new_user()
    pdf = DATA / "shared-mime-info-spec.pdf"
    r = upload_pdf(service, h, pdf.read_bytes(), name=pdf.name)
    assert r.status_code == 200, r.text
    body = r.json()
    n = len(body["queued"])
    assert n >= 10 and body["message"] == f"Processed {n} pages from PDF."
    assert body["queued"][0] == f"uploads/{user}/pdfs/shared-mime-info-spec_page_001.jpg"
    final = wait_settled(service, h, n)
    assert len(final["done"]) == n


def test_a_zip_through_the_pdf_route_is_extracted_like_upload(service: Service) -> None:
    _, h = service.new_user()
    r = upload_zip(
        service,
        h,
        make_zip({"p.png": make_png((5, 5, 250))}),
        route="/upload/pdf",
        field="upload_file",
    )
    assert r.status_code == 200 and r.json()["message"] == "Uploaded and queued 1 images."


@pytest.fixture(scope="module")
def victim(service: Service) -> tuple[str, dict[str, str], list[str]]:
    """Another user whose data must survive every hostile upload."""
    user, h = service.new_user("victim")
    queued = upload_zip(service, h, make_zip({"safe.jpg": make_jpeg((9, 9, 9))})).json()["queued"]
    upload_pdf(service, h, make_pdf(["victim page one", "victim page two"]))
    return user, h, queued


def _assert_victim_intact(service: Service, victim: tuple[str, dict[str, str], list[str]]) -> None:
    _, h, queued = victim
    with service.client() as c:
        assert c.get(f"/image/{queued[0]}", headers=h).status_code == 200
    st = status_snapshot(service, h)
    known = st["queued_items"] + st["processing"] + st["done"]
    assert queued[0] in known and len(known) == 3 and st["errors"] == {}


@pytest.mark.parametrize("case", list(HOSTILE_CASES.values()), ids=list(HOSTILE_CASES))
def test_hostile_uploads_get_a_clear_answer_and_hurt_nobody(
    service: Service, victim: tuple[str, dict[str, str], list[str]], case: object
) -> None:
    from tests.support.hostile import HostileCase

    assert isinstance(case, HostileCase)
    _, h = service.new_user("attacker")
    data = case.build()
    if case.kind == "pdf":
        r = upload_pdf(service, h, data, name=case.filename)
    elif case.kind == "image":
        r = upload_zip(service, h, make_zip({case.filename: data, "good.jpg": make_jpeg()}))
    else:
        r = upload_zip(service, h, data, name=case.filename)
    if case.kind == "image":  # inside a ZIP beside a good image: a per-item outcome
        assert r.status_code == 200, r.text
        body = r.json()
        if case.name == "corrupt_jpeg":  # passes the header check, fails to decode
            final = wait_settled(service, h, 2)
            assert list(final["errors"]) == [q for q in body["queued"] if "corrupt" in q]
            assert len(final["done"]) == 1
        else:
            assert len(body["queued"]) == 1 and body["skipped"], body
    elif case.outcome == "invalid_upload":
        assert r.status_code == 400, r.text
        assert r.json()["detail"]
    elif case.outcome == "limit_exceeded":
        assert r.status_code == 413, r.text
        assert r.json()["limit"] == case.limit
    else:  # partial: the safe members are kept, the others skipped with a reason
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["queued"]) == 1 and body["skipped"], body
    _assert_victim_intact(service, victim)
    with service.client() as c:
        assert c.get("/healthz").status_code == 200


def test_another_users_paths_are_never_served_or_touched(
    service: Service, victim: tuple[str, dict[str, str], list[str]]
) -> None:
    victim_user, _, queued = victim
    _, h = service.new_user("snoop")
    target = queued[0]
    with service.client() as c:
        for path in (
            f"/image/{target}",
            f"/image/uploads/{victim_user}/../{victim_user}/safe.jpg",
            "/image/../../etc/passwd",
            "/image/%2e%2e/%2e%2e/etc/passwd",
            f"/image/data/{target}",
        ):
            r = c.get(path, headers=h)
            assert r.status_code == 404, path
            # ours, or the router's own 404 where the client normalised the path away
            assert r.json()["detail"] in ("Image not found", "Not Found"), path
        r = c.delete(f"/queue/{target}", headers=h)
        assert r.status_code == 404
    _assert_victim_intact(service, victim)


def test_deleting_a_queued_item_removes_it_and_unknown_items_are_404(service: Service) -> None:
    _, h = service.new_user()
    with service.client() as c:
        r = c.delete("/queue/uploads/nobody/x.jpg", headers=h)
        assert r.status_code == 404 and "not in your queue" in r.json()["detail"]


def test_deleting_an_item_that_is_already_done_is_a_409_and_keeps_it(service: Service) -> None:
    _, h = service.new_user()
    [item] = upload_zip(service, h, make_zip({"kept.jpg": make_jpeg((3, 99, 3))})).json()["queued"]
    wait_settled(service, h, 1)
    with service.client() as c:
        r = c.delete(f"/queue/{item}", headers=h)
        assert r.status_code == 409 and "done" in r.json()["detail"]
        assert c.get("/done", headers=h).json() == {"done_images": [item]}
        assert c.get(f"/image/{item}", headers=h).status_code == 200


def test_reset_clears_the_callers_space_and_nothing_else(
    service: Service, victim: tuple[str, dict[str, str], list[str]]
) -> None:
    user, h = service.new_user()
    body = upload_zip(service, h, make_zip({"r.jpg": make_jpeg((77, 7, 7))})).json()
    wait_settled(service, h, 1)
    with service.client() as c:
        r = c.post("/reset", headers=h)
        assert r.status_code == 200 and r.json() == {"message": f"Reset completed for user {user}."}
        assert c.get("/done", headers=h).json() == {"done_images": []}
        assert c.get(f"/image/{body['queued'][0]}", headers=h).status_code == 404
        st = status_snapshot(service, h)
        assert st["queue"] == 0 and st["done"] == [] and st["retries"] == {}
        # the same image can be uploaded again afterwards
        again = upload_zip(service, h, make_zip({"r.jpg": make_jpeg((77, 7, 7))})).json()
        assert len(again["queued"]) == 1
    _assert_victim_intact(service, victim)


def test_status_is_a_real_sse_stream_with_the_spec_fields(service: Service) -> None:
    _, h = service.new_user()
    event = next(iter(sse_events(service, "/status", h)))
    assert set(event) == {
        "queue", "queued_items", "processing", "processing_workers", "done", "errors", "retries",
    }  # fmt: skip
    with service.client() as c:
        ticket = c.post("/stream-ticket", headers=h).json()["ticket"]
    event = next(iter(sse_events(service, f"/status?ticket={ticket}", {})))
    assert event["queue"] == 0


def test_upload_without_the_file_field_or_with_an_empty_file_is_a_4xx(service: Service) -> None:
    _, h = service.new_user()
    with service.client() as c:
        assert c.post("/upload", headers=h).status_code == 422
        r = c.post("/upload", headers=h, files={"wrong_field": ("a.zip", b"PK", "x")})
        assert r.status_code == 422
        r = c.post("/upload", headers=h, files={"zip_file": ("a.zip", b"", "application/zip")})
        assert r.status_code == 400


def test_a_declared_oversized_body_is_refused_with_413_before_it_is_read(service: Service) -> None:
    _, h = service.new_user()
    url = urlparse(service.url)
    request = (
        f"POST /upload HTTP/1.1\r\nHost: {url.hostname}\r\n"
        f"Authorization: {h['Authorization']}\r\n"
        "Content-Type: multipart/form-data; boundary=xyz\r\n"
        f"Content-Length: {50 * 1024**3}\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection((url.hostname, url.port), timeout=30) as s:
        s.sendall(request.encode())
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        reply = b"".join(chunks).decode(errors="replace")
    assert reply.startswith("HTTP/1.1 413"), reply[:200]
    assert "max_upload_bytes" in reply


def test_a_queued_item_deleted_over_http_is_gone_with_the_spec_message(service: Service) -> None:
    """The item is placed in the queue without waking the dispatcher, so it stays queued."""
    import json

    from lumen.storage import Stores

    user, h = service.new_user()
    stores = Stores(service.settings)
    item = f"uploads/{user}/waiting.jpg"
    pipe = stores.redis.pipeline()
    pipe.rpush(stores.keys.queue(user), item)
    pipe.hset(stores.keys.meta(user), item, json.dumps({"sha256": "w"}))
    pipe.hset(stores.keys.sha(user), "w", item)
    pipe.execute()
    with service.client() as c:
        r = c.delete(f"/queue/{item}", headers=h)
        assert r.status_code == 200
        assert r.json() == {"message": f"Removed 1 occurrence(s) of {item} from queue."}
        assert c.delete(f"/queue/{item}", headers=h).status_code == 404
    st = status_snapshot(service, h)
    assert st["queue"] == 0 and item not in st["done"] + st["processing"]
