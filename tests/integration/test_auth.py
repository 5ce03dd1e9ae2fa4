"""Accounts, tokens, CORS and the protected routes, over real HTTP."""

from __future__ import annotations

import time
import uuid

import jwt
import pytest

from tests.conftest import Service

PASSWORD = "correct horse"


def _name() -> str:
    return f"a{uuid.uuid4().hex[:10]}"


def test_signup_then_login_returns_a_bearer_token(service: Service) -> None:
    name = _name()
    with service.client() as c:
        r = c.post("/signup", json={"username": name, "password": PASSWORD})
        assert r.status_code == 200
        assert r.json() == {"message": "Signup successful"}
        r = c.post("/login", data={"username": name, "password": PASSWORD})
        assert r.status_code == 200
        body = r.json()
        assert body["token_type"] == "bearer"
        claims = jwt.decode(body["access_token"], options={"verify_signature": False})
        assert claims["sub"] == name and claims["exp"] > claims["iat"]
        r = c.get("/done", headers={"Authorization": f"Bearer {body['access_token']}"})
        assert r.status_code == 200 and r.json() == {"done_images": []}


def test_duplicate_signup_is_a_409_and_keeps_the_first_password(service: Service) -> None:
    name = _name()
    with service.client() as c:
        assert c.post("/signup", json={"username": name, "password": PASSWORD}).status_code == 200
        r = c.post("/signup", json={"username": name, "password": "another password"})
        assert r.status_code == 409
        assert "taken" in r.json()["detail"]
        assert c.post("/login", data={"username": name, "password": PASSWORD}).status_code == 200


@pytest.mark.parametrize(
    "username",
    ["ab", "x" * 65, ".hidden", "has space", "slash/name", "dots/../up", "", "émoji😀"],
)
def test_bad_usernames_are_refused_with_400(service: Service, username: str) -> None:
    with service.client() as c:
        r = c.post("/signup", json={"username": username, "password": PASSWORD})
        assert r.status_code == 400, r.text
        assert "username" in r.json()["detail"]


@pytest.mark.parametrize("password", ["", "short", "1234567"])
def test_short_passwords_are_refused_with_400(service: Service, password: str) -> None:
    with service.client() as c:
        r = c.post("/signup", json={"username": _name(), "password": password})
        assert r.status_code == 400
        assert "password" in r.json()["detail"]


def test_signup_with_missing_fields_is_a_4xx(service: Service) -> None:
    with service.client() as c:
        assert c.post("/signup", json={"username": _name()}).status_code == 422
        assert c.post("/login", data={"username": _name()}).status_code == 422


def test_wrong_password_and_unknown_user_are_401(service: Service) -> None:
    name, _ = service.new_user()
    with service.client() as c:
        assert (
            c.post("/login", data={"username": name, "password": "wrong pass"}).status_code == 401
        )
        r = c.post("/login", data={"username": _name(), "password": PASSWORD})
        assert r.status_code == 401


def test_repeated_failed_logins_are_throttled_with_429(service: Service) -> None:
    name, _ = service.new_user()
    with service.client() as c:
        codes = [
            c.post("/login", data={"username": name, "password": f"bad-{i}-pass"}).status_code
            for i in range(service.settings.auth.login_max_failures)
        ]
        assert codes == [401] * service.settings.auth.login_max_failures
        r = c.post("/login", data={"username": name, "password": PASSWORD})
        assert r.status_code == 429
        assert int(r.headers["Retry-After"]) > 0


def _tokens(service: Service, name: str) -> dict[str, str]:
    secret = service.settings.with_local_secret().auth.jwt_secret
    assert secret
    now = int(time.time())
    good = {"sub": name, "iat": now, "exp": now + 600}
    with service.client() as c:
        real = c.post("/login", data={"username": name, "password": "correct horse"}).json()
    head, _body, sig = real["access_token"].split(".")
    forged = jwt.utils.base64url_encode(b'{"sub":"admin"}').decode()
    return {
        "expired": jwt.encode({**good, "iat": now - 7200, "exp": now - 3600}, secret, "HS256"),
        "tampered": f"{head}.{forged}.{sig}",
        "wrong_key": jwt.encode(good, "x" * 48, "HS256"),
        "alg_none": jwt.encode(good, None, algorithm="none"),
        "no_exp": jwt.encode({"sub": name, "iat": now}, secret, "HS256"),
        "garbage": "not-a-token",
        "other_user": jwt.encode({**good, "sub": "nobody-here"}, secret, "HS256"),
    }


def test_every_bad_token_kind_gets_401(service: Service) -> None:
    name, _ = service.new_user()
    with service.client() as c:
        for kind, token in _tokens(service, name).items():
            r = c.get("/done", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 401, kind
            assert r.json()["detail"], kind


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/done"),
        ("GET", "/status"),
        ("POST", "/reset"),
        ("POST", "/search"),
        ("POST", "/search/pdf"),
        ("POST", "/upload"),
        ("POST", "/upload/pdf"),
        ("DELETE", "/queue/uploads/x/a.jpg"),
        ("GET", "/image/uploads/x/a.jpg"),
        ("GET", "/monitor/worker"),
        ("GET", "/monitor/events"),
        ("POST", "/monitor/events/reset"),
    ],
)
def test_protected_routes_need_a_token(service: Service, method: str, path: str) -> None:
    with service.client() as c:
        r = c.request(method, path)
        assert r.status_code == 401, (path, r.text)


def test_cors_preflight_allows_any_origin_and_the_authorization_header(service: Service) -> None:
    with service.client() as c:
        r = c.options(
            "/search",
            headers={
                "Origin": "https://example.org",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "*"
        assert "authorization" in r.headers["access-control-allow-headers"].lower()
        assert "access-control-allow-credentials" not in r.headers


def test_healthz_needs_no_token(service: Service) -> None:
    with service.client() as c:
        r = c.get("/healthz")
        assert r.status_code == 200 and r.json()["redis"] is True
