"""HTTP helpers shared by the integration tests: uploads, searches, SSE streams, waiting."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httpx

from tests.support.waiting import wait_until

if TYPE_CHECKING:  # conftest imports this module: no import of it at run time
    from tests.conftest import Service


def upload_zip(
    service: Service,
    headers: dict[str, str],
    data: bytes,
    name: str = "a.zip",
    route: str = "/upload",
    field: str = "zip_file",
) -> httpx.Response:
    with service.client() as c:
        return c.post(route, headers=headers, files={field: (name, data, "application/zip")})


def upload_pdf(
    service: Service, headers: dict[str, str], data: bytes, name: str = "doc.pdf"
) -> httpx.Response:
    with service.client() as c:
        return c.post(
            "/upload/pdf", headers=headers, files={"upload_file": (name, data, "application/pdf")}
        )


def sse_events(
    service: Service, path: str, headers: dict[str, str], timeout_s: float = 60
) -> Iterator[Any]:
    """Yield each `data:` JSON object of an SSE stream until the caller stops."""
    with (
        httpx.Client(base_url=service.url, timeout=httpx.Timeout(timeout_s)) as c,
        c.stream("GET", path, headers=headers) as r,
    ):
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                yield json.loads(line[6:])


def status_snapshot(service: Service, headers: dict[str, str]) -> dict[str, Any]:
    for event in sse_events(service, "/status", headers):
        return event  # type: ignore[no-any-return]
    raise AssertionError("no status event")


def wait_settled(
    service: Service, headers: dict[str, str], expected_done: int, timeout_s: float = 180
) -> dict[str, Any]:
    """Follow /status until `expected_done` items are done (or errored) and nothing is pending."""
    deadline = time.time() + timeout_s
    last: dict[str, Any] = {}
    for event in sse_events(service, "/status", headers, timeout_s=timeout_s):
        last = event
        settled = event["queue"] == 0 and not event["processing"]
        if settled and len(event["done"]) + len(event["errors"]) >= expected_done:
            return event
        if time.time() > deadline:
            break
    raise AssertionError(f"queue did not settle: {last}")


def search(
    service: Service,
    headers: dict[str, str],
    query: str | None = None,
    image: bytes | None = None,
    top_k: int | str | None = None,
) -> httpx.Response:
    data: dict[str, Any] = {}
    if query is not None:
        data["query"] = query
    if top_k is not None:
        data["top_k"] = str(top_k)
    files = {"image": ("q.png", image, "image/png")} if image is not None else None
    with service.client() as c:
        return c.post("/search", headers=headers, data=data, files=files)


def is_healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def wait_healthy(url: str, timeout_s: float = 120) -> None:
    """Wait until the service at `url` answers `/healthz` with 200."""
    wait_until(lambda: is_healthy(url), timeout_s, f"{url} to become healthy", poll_s=0.5)
