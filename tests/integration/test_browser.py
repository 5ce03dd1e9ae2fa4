"""The web UI end to end in headless Chromium: sign up, log in, upload a ZIP, watch, search,
see storage against the quota, retry and delete failed items, reset; no URL the page requests
ever carries the bearer token."""

from __future__ import annotations

import contextlib
import io
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lumen.cli import usage_line
from tests.conftest import Service
from tests.support.hostile import corrupt_jpeg, make_jpeg, make_zip
from tests.support.tiny_clip import draw_shape

CHROMIUM = Path(os.environ.get("LUMEN_CHROMIUM", "/usr/bin/chromium"))
SCREENSHOT = Path(os.environ.get("LUMEN_UI_SCREENSHOT", "/tmp/lumen-ui.png"))
# Playwright drives the distribution's Chromium (scripts/ensure-chromium.sh installs it) and
# never downloads a browser of its own; these flags keep it off the network and the GPU.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHAPES = [("red", "circle"), ("blue", "square"), ("green", "triangle"), ("yellow", "circle")]
TIMEOUT_MS = 180_000

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists() and not os.environ.get("CI"),
    reason=f"{CHROMIUM} is missing; run scripts/ensure-chromium.sh (in CI this test must run)",
)


def shapes_zip() -> bytes:
    members = {}
    for color, shape in SHAPES:
        buf = io.BytesIO()
        draw_shape(color, shape, size=192, seed=11).save(buf, format="PNG")
        members[f"{color}_{shape}.png"] = buf.getvalue()
    return make_zip(members)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


def console_problem(msg: Any) -> list[str]:
    """Console errors other than the browser's own note on an HTTP error status."""
    if msg.type != "error" or msg.text.startswith("Failed to load resource"):
        return []
    return [f"console error: {msg.text}"]


def usage_text(usage: dict[str, int]) -> str:
    """What the UI shows for `GET /usage`: the CLI's line, with a middle dot between."""
    return usage_line(usage).replace(", ", " · ", 1)


def poll(page: Any, condition: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    """Let the page run until `condition()` holds (browser events are handled meanwhile)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        page.wait_for_timeout(100)


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(60_000)
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: problems.extend(console_problem(msg)))
    yield page
    context.close()
    assert problems == [], problems


@pytest.fixture
def requested(page: Any) -> list[Any]:
    """Every request the page makes (fetch, XHR, EventSource, images), in order."""
    seen: list[Any] = []
    page.on("request", lambda request: seen.append(request))
    return seen


def test_a_new_user_uploads_a_zip_and_finds_the_red_circle_by_words(
    service: Service, page: Any, requested: list[Any], tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    user = f"web{uuid.uuid4().hex[:10]}"
    page.goto(f"{service.url}/")
    expect(page.locator("#auth-panel")).to_be_visible()
    expect(page.locator("#app")).to_be_hidden()

    page.fill("#signup-username", user)
    page.fill("#signup-password", "correct horse battery")
    page.click("#signup-button")
    expect(page.locator("#signup-message")).to_contain_text("log in")
    expect(page.locator("#login-username")).to_have_value(user)
    page.click("#login-button")
    expect(page.locator("#app")).to_be_visible()
    expect(page.locator("#user-name")).to_contain_text(user)
    expect(page.locator("#live-status")).to_have_text("live")
    token = page.evaluate("localStorage.getItem('lumen.token')")
    assert token

    def usage() -> dict[str, int]:
        with service.client(headers={"Authorization": f"Bearer {token}"}) as c:
            r = c.get("/usage")
            assert r.status_code == 200, r.text
            return dict(r.json())

    empty = usage()
    assert (empty["bytes"], empty["items"]) == (0, 0)
    expect(page.locator("#usage-text")).to_have_text(usage_text(empty))

    archive = tmp_path / "shapes.zip"
    archive.write_bytes(shapes_zip())
    page.set_input_files("#zip-input", str(archive))
    page.click("#zip-upload-button")
    expect(page.locator("#upload-message")).to_have_text(
        f"shapes.zip: {len(SHAPES)} images queued", timeout=TIMEOUT_MS
    )
    expect(page.locator("#done-count")).to_have_text(str(len(SHAPES)), timeout=TIMEOUT_MS)
    expect(page.locator("#error-count")).to_have_text("0")
    expect(page.locator("#queue-progress-text")).to_contain_text(f"{len(SHAPES)} of {len(SHAPES)}")
    stored = usage()
    assert stored["items"] == len(SHAPES) and stored["bytes"] > 0
    expect(page.locator("#usage-text")).to_have_text(usage_text(stored))
    if stored["max_items"]:
        expect(page.locator("#usage-text")).to_contain_text(
            f"{len(SHAPES)} of {stored['max_items']:,} items"
        )

    page.fill("#search-query", "a red circle")
    page.click("#search-button")
    first = page.locator("#results .result").first
    expect(first).to_be_visible()
    expect(page.locator("#results .result")).to_have_count(len(SHAPES))
    expect(first.locator(".file")).to_have_text(f"uploads/{user}/red_circle.png")
    image = first.locator("img")
    image.scroll_into_view_if_needed()
    page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=image.element_handle()
    )
    width = page.evaluate("img => img.naturalWidth", image.element_handle())
    assert width == 192, "the result thumbnail is the uploaded image itself"
    for img in page.locator("#results .result img").all():
        src = img.get_attribute("src")
        assert src.startswith("/image/uploads/") and "sig=" in src and "exp=" in src, src
        assert "token=" not in src and token not in src, src
        img.scroll_into_view_if_needed()
        page.wait_for_function("i => i.complete && i.naturalWidth > 0", arg=img.element_handle())
    expect(page.locator("#error")).to_be_hidden()

    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)

    # A reset ends the open streams (`event: end`); the page gets new tickets and reconnects.
    def tickets() -> int:
        return sum(r.method == "POST" and r.url.endswith("/stream-ticket") for r in requested)

    before = tickets()
    assert before >= 3, "one ticket per stream: status, workers, events"
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#reset-button")
    expect(page.locator("#upload-message")).to_contain_text("Reset completed")
    expect(page.locator("#usage-text")).to_have_text(usage_text(usage()))
    assert usage()["items"] == 0
    poll(page, lambda: tickets() >= before + 3, "the streams to reconnect with new tickets")
    expect(page.locator("#live-status")).to_have_text("live")
    expect(page.locator("#done-count")).to_have_text("0")
    expect(page.locator("#error")).to_be_hidden()

    urls = [r.url for r in requested]
    assert any("?ticket=" in u for u in urls), "event streams open with tickets"
    leaked = [u for u in urls if token in u or "token=" in u]
    assert leaked == [], f"the bearer token went into a URL: {leaked}"


def test_a_wrong_password_shows_the_servers_message(service: Service, page: Any) -> None:
    from playwright.sync_api import expect

    user, _ = service.new_user("webbad")
    page.goto(f"{service.url}/")
    page.fill("#login-username", user)
    page.fill("#login-password", "not the password")
    page.click("#login-button")
    expect(page.locator("#error")).to_be_visible()
    expect(page.locator("#error-text")).not_to_be_empty()
    expect(page.locator("#app")).to_be_hidden()
    page.screenshot(path=str(SCREENSHOT.with_name(f"{SCREENSHOT.stem}-login.png")))


def test_a_refused_stream_shows_the_servers_reason_and_reconnects_after_retry_after(
    service: Service, page: Any
) -> None:
    from playwright.sync_api import expect

    user, headers = service.new_user("webcap")
    cap = service.settings.admission.streams_per_user
    with service.client(headers=headers) as c, contextlib.ExitStack() as held:
        for _ in range(cap):  # every stream this user may have, held open by another client
            r = held.enter_context(c.stream("GET", "/status"))
            assert r.status_code == 200
        with c.stream("GET", "/status") as refused:
            refused.read()
            assert refused.status_code == 429, refused.text
            detail, wait = refused.json()["detail"], refused.headers["Retry-After"]

        page.goto(f"{service.url}/")
        page.fill("#login-username", user)
        page.fill("#login-password", "correct horse")
        page.click("#login-button")
        expect(page.locator("#app")).to_be_visible()
        expect(page.locator("#error-text")).to_have_text(
            f"Live updates paused: {detail}. Retrying in {wait} s."
        )
        expect(page.locator("#live-status")).to_have_text("offline")
    # The held streams are closed: after Retry-After the page connects with new tickets.
    expect(page.locator("#live-status")).to_have_text("live", timeout=60_000)
    expect(page.locator("#error")).to_be_hidden()


def test_a_failed_item_can_be_retried_one_or_all_at_once_and_then_deleted(
    service: Service, page: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    user, headers = service.new_user("webfail")

    def usage() -> dict[str, int]:
        with service.client(headers=headers) as c:
            r = c.get("/usage")
            assert r.status_code == 200, r.text
            return dict(r.json())

    page.goto(f"{service.url}/")
    page.fill("#login-username", user)
    page.fill("#login-password", "correct horse")
    page.click("#login-button")
    expect(page.locator("#live-status")).to_have_text("live")
    expect(page.locator("#errors-bar")).to_be_hidden()

    # broken.jpg passes the header check and cannot be decoded: it fails on every attempt.
    archive = tmp_path / "broken.zip"
    archive.write_bytes(make_zip({"broken.jpg": corrupt_jpeg(), "fine.jpg": make_jpeg()}))
    page.set_input_files("#zip-input", str(archive))
    page.click("#zip-upload-button")
    expect(page.locator("#upload-message")).to_have_text(
        "broken.zip: 2 images queued", timeout=TIMEOUT_MS
    )
    item = f"uploads/{user}/broken.jpg"
    failed = page.locator(f'#queue-errors li[data-item="{item}"]')
    expect(failed).to_be_visible(timeout=TIMEOUT_MS)
    expect(page.locator("#done-count")).to_have_text("1", timeout=TIMEOUT_MS)
    expect(page.locator("#error-count")).to_have_text("1")
    expect(page.locator("#errors-bar")).to_be_visible()
    expect(page.locator("#usage-text")).to_have_text(usage_text(usage()))
    assert usage()["items"] == 2, "a failed item is stored until it is deleted"

    # Each failure is an item_failed event in the page's event list: its count shows the
    # item went back to the queue and failed again, however fast that happened.
    failures = page.locator("#events li", has=page.locator(".badge.item_failed")).filter(
        has_text=f"item={item}"
    )
    expect(failures).to_have_count(1, timeout=TIMEOUT_MS)

    def posted(path: str) -> Callable[[Any], bool]:
        return lambda r: r.request.method == "POST" and r.url.endswith(path)

    with page.expect_response(posted(f"/queue/{item}/retry")) as answer:
        failed.get_by_role("button", name="Retry", exact=True).click()
    assert answer.value.status == 200
    assert answer.value.json()["requeued"] == [item]
    expect(page.locator("#queue-message")).to_have_text(f"Requeued {item}.")
    expect(failures).to_have_count(2, timeout=TIMEOUT_MS)
    expect(failed).to_be_visible()

    with page.expect_response(posted("/queue/retry-errors")) as answer:
        page.click("#retry-all-button")
    assert answer.value.status == 200
    assert answer.value.json()["requeued"] == [item]
    expect(page.locator("#queue-message")).to_have_text("Requeued 1 failed item(s).")
    expect(failures).to_have_count(3, timeout=TIMEOUT_MS)  # failed again: in errors now
    expect(failed).to_be_visible()
    expect(page.locator("#error-count")).to_have_text("1")

    with page.expect_response(lambda r: r.request.method == "DELETE") as answer:
        failed.get_by_role("button", name="Delete", exact=True).click()
    assert answer.value.status == 200, answer.value.text()
    expect(failed).to_have_count(0)
    expect(page.locator("#error-count")).to_have_text("0")
    expect(page.locator("#errors-bar")).to_be_hidden()
    expect(page.locator("#done-count")).to_have_text("1")
    after = usage()
    assert after["items"] == 1
    expect(page.locator("#usage-text")).to_have_text(usage_text(after))
    expect(page.locator("#error")).to_be_hidden()
    page.screenshot(path=str(SCREENSHOT.with_name(f"{SCREENSHOT.stem}-retry.png")), full_page=True)
