"""The `lumen` command against the running service: what a user types and what they read."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import httpx
import pytest

from lumen.answerer import NO_KEY_REASON
from lumen.cli import run
from tests.conftest import ROOT, Service
from tests.support.hostile import make_pdf, make_zip
from tests.support.tiny_clip import draw_shape

PASSWORD = "correct horse battery"
SHAPES = [("red", "circle"), ("blue", "square"), ("green", "triangle")]


@dataclass
class Outcome:
    rc: int
    out: str
    err: str


@dataclass
class Cli:
    """One user's shell: `lumen --url ...` with its own config dir (the saved token)."""

    url: str
    config_dir: Path
    user: str

    def __call__(self, *argv: str) -> Outcome:
        out, err = io.StringIO(), io.StringIO()
        env = {"XDG_CONFIG_HOME": str(self.config_dir)}
        with (
            mock.patch.dict(os.environ, env),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            os.environ.pop("LUMEN_TOKEN", None)  # restored with the rest on exit
            rc = run([*argv, "--url", self.url])
        return Outcome(rc, out.getvalue(), err.getvalue())

    @property
    def token_file(self) -> Path:
        return self.config_dir / "lumen" / "token"


def new_cli(service: Service, tmp: Path, prefix: str) -> Cli:
    user = f"{prefix}{uuid.uuid4().hex[:10]}"
    return Cli(service.url, tmp / user, user)


def write_shapes_zip(path: Path) -> Path:
    members = {}
    for color, shape in SHAPES:
        buf = io.BytesIO()
        draw_shape(color, shape, size=160, seed=5).save(buf, format="PNG")
        members[f"{color}_{shape}.png"] = buf.getvalue()
    path.write_bytes(make_zip(members))
    return path


@pytest.fixture(scope="module")
def shapes_cli(service: Service, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    """A user signed up through the CLI, whose shapes ZIP is uploaded and embedded."""
    tmp = tmp_path_factory.mktemp("cli")
    cli = new_cli(service, tmp, "cli")
    signed = cli("signup", cli.user, "--password", PASSWORD)
    assert signed.rc == 0, signed
    assert f"Logged in as {cli.user}" in signed.out
    uploaded = cli("upload", str(write_shapes_zip(tmp / "shapes.zip")))
    assert uploaded.rc == 0, uploaded
    assert f"({len(SHAPES)} queued)" in uploaded.out
    assert uploaded.out.splitlines()[-1].startswith("Storage: "), uploaded.out
    followed = cli("status", "--follow")
    assert followed.rc == 0, followed
    yield cli


def test_signup_saves_a_private_token_that_later_commands_use(shapes_cli: Cli) -> None:
    assert shapes_cli.token_file.is_file()
    assert stat.S_IMODE(shapes_cli.token_file.stat().st_mode) == 0o600
    again = shapes_cli("login", shapes_cli.user, "--password", PASSWORD)
    assert again.rc == 0, again
    assert str(shapes_cli.token_file) in again.out


def test_status_after_follow_shows_everything_done(shapes_cli: Cli) -> None:
    status = shapes_cli("status")
    assert status.rc == 0, status
    assert status.out.splitlines()[0] == f"done {len(SHAPES)}  queued 0  processing 0  errors 0"


def test_search_prints_the_described_image_first(shapes_cli: Cli) -> None:
    table = shapes_cli("search", "a red circle", "-k", "3")
    assert table.rc == 0, table
    header, first, *rest = table.out.splitlines()
    assert header.split()[:2] == ["similarity", "filename"]
    assert first.split()[1] == f"uploads/{shapes_cli.user}/red_circle.png"
    assert len(rest) == 2

    as_json = shapes_cli("search", "a blue square", "--json")
    results = json.loads(as_json.out)
    assert results[0]["filename"].endswith("/blue_square.png")


def test_search_links_are_signed_and_open_one_image_without_a_token(
    service: Service, shapes_cli: Cli
) -> None:
    results = json.loads(shapes_cli("search", "a red circle", "--json").out)
    link = results[0]["image_url"]
    assert link.startswith(f"/image/uploads/{shapes_cli.user}/") and "sig=" in link, link
    assert "token=" not in link and shapes_cli.token_file.read_text().strip() not in link
    opened = httpx.get(f"{service.url}{link}", timeout=30)
    assert opened.status_code == 200, opened.text
    assert opened.headers["content-type"].startswith("image/")
    other = results[1]["filename"].removeprefix("uploads/")
    forged = link.replace(results[0]["filename"].removeprefix("uploads/"), other)
    assert forged != link
    assert httpx.get(f"{service.url}{forged}", timeout=30).status_code == 401

    table = shapes_cli("search", "a red circle", "-k", "1", "--links")
    assert table.rc == 0, table
    shown = table.out.splitlines()[1].split()[-1]
    assert shown.startswith(f"{service.url}{link.partition('?')[0]}?") and "sig=" in shown


def test_usage_shows_the_uploaded_images_against_the_quota(
    service: Service, shapes_cli: Cli
) -> None:
    limits = service.settings.limits
    as_json = shapes_cli("usage", "--json")
    assert as_json.rc == 0, as_json
    usage = json.loads(as_json.out)
    assert usage["items"] == len(SHAPES) and usage["bytes"] > 0
    assert (usage["max_bytes"], usage["max_items"]) == (
        limits.user_max_bytes,
        limits.user_max_items,
    )
    shown = shapes_cli("usage")
    assert shown.rc == 0, shown
    items = f"{len(SHAPES)} of {limits.user_max_items:,} items" if limits.user_max_items else (
        f"{len(SHAPES)} items (unlimited)"
    )  # fmt: skip
    assert shown.out.startswith("Storage: ") and shown.out.rstrip().endswith(items), shown.out


def test_done_lists_every_uploaded_image(shapes_cli: Cli) -> None:
    done = shapes_cli("done")
    assert done.rc == 0, done
    names = sorted(line.rsplit("/", 1)[1] for line in done.out.splitlines())
    assert names == sorted(f"{c}_{s}.png" for c, s in SHAPES)


def test_deleting_an_unknown_item_exits_2_with_the_servers_detail(
    service: Service, shapes_cli: Cli
) -> None:
    item = f"uploads/{shapes_cli.user}/never-uploaded.png"
    headers = {"Authorization": f"Bearer {shapes_cli.token_file.read_text().strip()}"}
    server = httpx.delete(f"{service.url}/queue/{item}", headers=headers, timeout=30)
    assert server.status_code == 404
    deleted = shapes_cli("delete", item)
    assert deleted.rc == 2
    assert deleted.out == ""
    assert f"error: {server.json()['detail']} (HTTP 404)" in deleted.err


def test_ask_uploads_a_pdf_and_prints_the_page_and_the_answer_or_why_not(
    service: Service, tmp_path: Path
) -> None:
    cli = new_cli(service, tmp_path, "ask")
    assert cli("signup", cli.user, "--password", PASSWORD).rc == 0
    pdf = tmp_path / "manual.pdf"
    pdf.write_bytes(make_pdf(["Installation: mount the bracket", "Reset: hold the button"]))
    asked = cli("ask", str(pdf), "How do I reset it?")
    assert asked.rc == 0, asked
    assert "(2 queued)" in asked.out
    assert re.search(r"^manual(\.pdf)?, page [12] \(similarity -?\d\.\d{3}\)$", asked.out, re.M)
    last = asked.out.strip().splitlines()[-1]
    if service.settings.gemini.api_key is None:
        assert last == f"No answer: {NO_KEY_REASON}"
    else:
        assert last


def test_reset_needs_yes_and_then_empties_the_space(service: Service, tmp_path: Path) -> None:
    cli = new_cli(service, tmp_path, "reset")
    assert cli("signup", cli.user, "--password", PASSWORD).rc == 0
    assert cli("upload", str(write_shapes_zip(tmp_path / "s.zip"))).rc == 0
    assert cli("status", "--follow").rc == 0

    refused = cli("reset")
    assert refused.rc == 2
    assert "--yes" in refused.err
    assert len(cli("done").out.splitlines()) == len(SHAPES)

    reset = cli("reset", "--yes")
    assert reset.rc == 0, reset
    assert cli("done").out.strip() == "(nothing done yet)"
    assert cli("search", "a red circle").out.strip() == "(nothing)"


def test_a_logged_out_user_is_told_to_log_in(service: Service, tmp_path: Path) -> None:
    cli = new_cli(service, tmp_path, "out")
    assert cli("signup", cli.user, "--password", PASSWORD).rc == 0
    assert cli("logout").rc == 0
    assert not cli.token_file.exists()
    refused = cli("done")
    assert refused.rc == 2
    assert "(HTTP 401) - run `lumen login USER`" in refused.err


def test_the_installed_command_runs_as_a_module(shapes_cli: Cli) -> None:
    env = {**os.environ, "XDG_CONFIG_HOME": str(shapes_cli.config_dir)}
    env.pop("LUMEN_TOKEN", None)
    proc = subprocess.run(
        [sys.executable, "-m", "lumen.cli", "--url", shapes_cli.url, "search", "a green triangle"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[1].split()[1].endswith("/green_triangle.png")
