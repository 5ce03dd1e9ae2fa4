"""The web UI end to end in headless Chromium: sign up, log in, upload a ZIP, watch, search."""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Service
from tests.support.hostile import make_zip
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


def test_a_new_user_uploads_a_zip_and_finds_the_red_circle_by_words(
    service: Service, page: Any, tmp_path: Path
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

    archive = tmp_path / "shapes.zip"
    archive.write_bytes(shapes_zip())
    page.set_input_files("#zip-input", str(archive))
    page.click("#zip-upload-button")
    expect(page.locator("#upload-message")).to_have_text(f"shapes.zip: {len(SHAPES)} images queued")
    expect(page.locator("#done-count")).to_have_text(str(len(SHAPES)), timeout=TIMEOUT_MS)
    expect(page.locator("#error-count")).to_have_text("0")
    expect(page.locator("#queue-progress-text")).to_contain_text(f"{len(SHAPES)} of {len(SHAPES)}")

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
    expect(page.locator("#error")).to_be_hidden()

    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)


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
