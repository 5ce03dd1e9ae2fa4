"""Safe to share: each attack on the real service is refused or contained, and another
user's request sent during the attack still gets its 200 (correctness only, no timing)."""

from __future__ import annotations

import contextlib
import io
import json
import random
import socket
import struct
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import httpx
from PIL import Image

from lumen.storage import Stores
from tests.conftest import Service
from tests.support.hostile import make_jpeg, make_zip
from tests.support.http import upload_zip, wait_settled


@contextlib.contextmanager
def bystander(service: Service) -> Iterator[Callable[[], None]]:
    """Another user; calling the yielded function checks their /done and /healthz answer."""
    _, h = service.new_user("bystander")

    def check() -> None:
        with service.client() as c:
            assert c.get("/done", headers=h).status_code == 200
            assert c.get("/healthz").status_code == 200

    yield check


def _open_stream(service: Service, h: dict[str, str], stack: contextlib.ExitStack) -> int:
    """Open a /status stream that stays open until `stack` closes; its status code."""
    client = stack.enter_context(service.client())
    response = stack.enter_context(client.stream("GET", "/status", headers=h))
    if response.status_code == 200:
        lines = response.iter_lines()
        next(lines)  # the stream really started
        stack.callback(lines.close)  # keep the iterator (closing it would close the stream)
    else:
        response.read()
    return response.status_code


def test_one_user_cannot_hold_more_streams_than_the_cap(service: Service) -> None:
    cap = service.settings.admission.streams_per_user
    _, h = service.new_user("streamer")
    with bystander(service) as check, contextlib.ExitStack() as stack:
        codes = [_open_stream(service, h, stack) for _ in range(cap)]
        assert codes == [200] * cap
        with service.client() as c, c.stream("GET", "/status", headers=h) as r:
            assert r.status_code == 429
            body = json.loads(r.read())
        assert body["code"] == "too_many_streams" and "close one" in body["detail"]
        assert int(r.headers["Retry-After"]) > 0
        check()
    # the slots come back when the streams close
    with contextlib.ExitStack() as stack:
        assert _open_stream(service, h, stack) == 200


def test_a_reset_ends_the_accounts_open_streams(service: Service) -> None:
    _, h = service.new_user("resetter")
    with service.client(timeout=60) as c, c.stream("GET", "/status", headers=h) as stream:
        lines = stream.iter_lines()
        assert next(lines).startswith("retry")
        assert c.post("/reset", headers=h).status_code == 200
        rest = list(lines)  # the server closes the stream at its next credential check
    assert any(line.startswith("event: end") for line in rest)


def test_anonymous_wrong_password_floods_are_refused_without_locking_the_owner_out(
    service: Service,
) -> None:
    owner, _ = service.new_user("owner")

    def guess(i: int) -> httpx.Response:
        attacker = {"X-Forwarded-For": "203.0.113.7"}  # one address, many guesses
        with service.client(headers=attacker) as c:
            return c.post("/login", data={"username": owner, "password": f"wrong-{i}"})

    with bystander(service) as check, ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(guess, range(64)))
        check()
    codes = {r.status_code for r in answers}
    assert codes <= {401, 429, 503}, codes
    assert 429 in codes  # the attacker's address is throttled
    for r in answers:
        if r.status_code in (429, 503):
            assert r.json()["code"] in ("too_many_requests", "busy") and "Retry-After" in r.headers
    with service.client() as c:  # the owner, from their own address, is not locked out
        r = c.post("/login", data={"username": owner, "password": "correct horse"})
        assert r.status_code == 200, r.text


def test_auth_bodies_over_the_form_limit_are_refused_before_parsing(service: Service) -> None:
    huge = "x" * (1024 * 1024)
    with bystander(service) as check, service.client() as c:
        r = c.post("/login", data={"username": huge, "password": "whatever pw"})
        assert r.status_code == 413 and r.json()["code"] == "limit_exceeded"
        assert r.json()["limit"] == "admission.max_form_bytes"
        r = c.post("/signup", json={"username": huge, "password": "whatever pw"})
        assert r.status_code == 413
        check()
    keys = Stores(service.settings).redis.keys(f"*{huge[:100]}*")
    assert keys == []  # the username never became a Redis key


def _raw_post(url: str, path: str, headers: dict[str, str]) -> bytes:
    """Send only the headers of a POST (no body) and read what the server answers."""
    parsed = urlparse(url)
    with socket.create_connection((parsed.hostname, parsed.port), timeout=30) as sock:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\n{head}\r\n".encode())
        return sock.recv(65536)


def test_an_upload_without_a_valid_token_gets_its_401_before_any_body_is_sent(
    service: Service,
) -> None:
    headers = {
        "Content-Type": "multipart/form-data; boundary=xyz",
        "Content-Length": str(2 * 10**9),
        "X-Forwarded-For": "203.0.113.9",
    }
    reply = _raw_post(service.url, "/upload", headers)
    assert reply.startswith(b"HTTP/1.1 401"), reply[:200]
    reply = _raw_post(service.url, "/upload", {**headers, "Authorization": "Bearer forged"})
    assert reply.startswith(b"HTTP/1.1 401"), reply[:200]


def _eocd_claiming(entries: int) -> bytes:
    """An archive of only an end-of-central-directory record that claims `entries`."""
    return struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, entries, entries, 46 * entries, 0, 0)


def test_a_zip_claiming_more_members_than_allowed_is_refused_before_its_directory_loads(
    service: Service,
) -> None:
    _, h = service.new_user("zipdir")
    r = upload_zip(service, h, _eocd_claiming(65_535))
    assert r.status_code == 413, r.text
    assert r.json()["limit"] == "max_zip_members"


def test_padding_after_an_image_end_marker_is_never_stored(service: Service) -> None:
    user, h = service.new_user("padder")
    members = {}
    for i in range(20):
        members[f"p{i}.jpg"] = make_jpeg((i * 10, 30, 60)) + random.randbytes(64 * 1024)
    r = upload_zip(service, h, make_zip(members))
    assert r.status_code == 200, r.text
    with service.client() as c:
        usage = c.get("/usage", headers=h).json()
    assert usage["items"] == len(r.json()["queued"]) == 20
    raw = sum(len(make_jpeg((i * 10, 30, 60))) for i in range(20))
    assert usage["bytes"] <= raw * 1.01 + 20 * 1024  # not the 20 x 64 KiB of padding


def _noise_jpeg(seed: int) -> bytes:
    rnd = random.Random(seed)
    img = Image.frombytes("RGB", (96, 96), rnd.randbytes(96 * 96 * 3))
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=95)
    return out.getvalue()


def test_an_archive_crossing_the_quota_keeps_what_fits_and_says_what_it_skipped(
    service: Service,
) -> None:
    user, h = service.new_user("quota")
    stores = Stores(service.settings)
    images = {f"n{i}.jpg": _noise_jpeg(i) for i in range(4)}
    room = len(images["n0.jpg"]) + len(images["n1.jpg"]) + 100
    quota = service.settings.limits.user_max_bytes
    stores.redis.hset(stores.keys.usage(user), "bytes", quota - room)  # nearly full already
    with bystander(service) as check:
        r = upload_zip(service, h, make_zip(images))
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["queued"]) == 2
        assert set(body["skipped"]) == {"n2.jpg", "n3.jpg"}
        assert all("quota" in why for why in body["skipped"].values())
        assert "not stored" in body["message"] or "quota" in body["message"]
        r = upload_zip(service, h, make_zip({"more.jpg": _noise_jpeg(9)}))
        assert r.status_code == 413 and r.json()["code"] == "quota_exceeded"
        check()
    with service.client() as c:
        usage = c.get("/usage", headers=h).json()
    assert usage["max_bytes"] == quota and usage["bytes"] <= quota


def test_image_links_are_signed_per_image_and_are_no_bearer_token(service: Service) -> None:
    user, h = service.new_user("links")
    members = {"a.jpg": make_jpeg((250, 0, 0)), "b.jpg": make_jpeg((0, 0, 250))}
    assert upload_zip(service, h, make_zip(members)).status_code == 200
    wait_settled(service, h, 2)
    with service.client() as c:
        results = c.post("/search", headers=h, data={"query": "red", "top_k": "2"}).json()
        urls = [r["image_url"] for r in results["results"]]
        assert len(urls) == 2 and all("sig=" in u and "token" not in u for u in urls)
        assert c.get(urls[0]).status_code == 200  # the link alone opens its image
        other = urls[1].split("?")[0]
        forged = f"{other}?{urls[0].split('?')[1]}"  # a's signature on b's path
        assert c.get(forged).status_code == 401
        sig = dict(p.split("=", 1) for p in urls[0].split("?")[1].split("&"))["sig"]
        assert c.post("/reset", headers={"Authorization": f"Bearer {sig}"}).status_code == 401
        token = h["Authorization"].split()[1]
        assert c.get(f"{other}?token={token}").status_code == 401  # no bearer in URLs
        assert c.get(other, headers=h).status_code == 200


def test_a_stream_ticket_opens_streams_only(service: Service) -> None:
    _, h = service.new_user("ticket")
    with service.client() as c:
        ticket = c.post("/stream-ticket", headers=h).json()["ticket"]
        assert c.get("/done", headers={"Authorization": f"Bearer {ticket}"}).status_code == 401
        with c.stream("GET", f"/status?ticket={ticket}") as stream:
            assert stream.status_code == 200
