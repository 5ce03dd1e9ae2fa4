"""OpenAPI at /docs describes every route of the spec, its auth and its errors."""

from __future__ import annotations

from tests.conftest import Service

SPEC_ROUTES = {
    ("post", "/signup"), ("post", "/login"), ("post", "/upload"), ("post", "/upload/pdf"),
    ("post", "/search"), ("post", "/search/pdf"), ("get", "/status"),
    ("delete", "/queue/{item}"), ("get", "/done"), ("post", "/reset"),
    ("get", "/image/{path}"), ("get", "/monitor/worker"), ("get", "/monitor/events"),
    ("post", "/monitor/events/reset"),
}  # fmt: skip
PUBLIC = {"/signup", "/login"}


def test_openapi_lists_every_spec_route_with_its_auth(service: Service) -> None:
    with service.client() as c:
        assert c.get("/docs").status_code == 200
        schema = c.get("/openapi.json").json()
    ops = {(m, p): op for p, item in schema["paths"].items() for m, op in item.items()}
    assert set(ops) >= SPEC_ROUTES, SPEC_ROUTES - set(ops)
    for (method, path), op in ops.items():
        if (method, path) not in SPEC_ROUTES:
            continue
        secured = bool(op.get("security"))
        assert secured == (path not in PUBLIC), (method, path)
        assert op.get("description") or op.get("summary"), (method, path)
    login = ops[("post", "/login")]["requestBody"]["content"]
    assert "application/x-www-form-urlencoded" in login
    signup = ops[("post", "/signup")]["requestBody"]["content"]
    assert "application/json" in signup
    upload = ops[("post", "/upload")]
    assert {"400", "401", "413"} <= set(upload["responses"])
