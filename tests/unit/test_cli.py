"""The `lumen` CLI and LumenClient against a fake service behind httpx.MockTransport."""

from __future__ import annotations

import io
import json
import stat
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from lumen.cli import Bar, build_parser, human_bytes, render_bar, run, token_path
from lumen.client import (
    LumenClient,
    StreamEnded,
    multipart_body,
    parse_sse,
    settled,
    zip_directory,
)

Handler = Callable[[httpx.Request], httpx.Response]


class FakeLumen:
    """Answers by (method, path); remembers every request with its body read."""

    def __init__(self, routes: dict[tuple[str, str], Handler | httpx.Response]) -> None:
        self.routes = routes
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        route = self.routes.get((request.method, request.url.path))
        if route is None:
            return httpx.Response(404, json={"detail": "Not Found"})
        return route(request) if callable(route) else route

    def client(self, token: str | None = "tok") -> LumenClient:
        return LumenClient("http://lumen.test", token, transport=httpx.MockTransport(self))


def sse(*payloads: Any) -> httpx.Response:
    body = "retry: 3000\n\n" + "".join(
        f"data: {json.dumps(p)}\n\n: heartbeat\n\n" for p in payloads
    )
    return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})


def sse_then_end(*payloads: Any, reason: str = "credential expired or revoked") -> httpx.Response:
    """A stream that sends `payloads` and then ends on purpose, as the service does."""
    body = "retry: 3000\n\n" + "".join(f"data: {json.dumps(p)}\n\n" for p in payloads)
    body += f"event: end\ndata: {json.dumps({'reason': reason})}\n\n"
    return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})


def usage(
    bytes_: int = 0, items: int = 0, max_bytes: int = 0, max_items: int = 0
) -> httpx.Response:
    body = {"bytes": bytes_, "items": items, "max_bytes": max_bytes, "max_items": max_items}
    return httpx.Response(200, json=body)


def status(queue: int = 0, processing: int = 0, done: int = 0, **extra: Any) -> dict[str, Any]:
    return {
        "queue": queue,
        "queued_items": [f"q{i}.jpg" for i in range(queue)],
        "processing": [f"p{i}.jpg" for i in range(processing)],
        "processing_workers": {f"p{i}.jpg": "w1" for i in range(processing)},
        "done": [f"d{i}.jpg" for i in range(done)],
        "errors": extra.get("errors", {}),
        "retries": {},
    }


def multipart_file(request: httpx.Request) -> tuple[str, bytes]:
    """The form field name and file bytes of a one-file multipart body."""
    boundary = request.headers["content-type"].split("boundary=")[1].encode()
    part = request.content.split(b"--" + boundary)[1]
    head, _, data = part.partition(b"\r\n\r\n")
    name = head.split(b'name="')[1].split(b'"')[0].decode()
    return name, data.removesuffix(b"\r\n")


@pytest.fixture(autouse=True)
def isolated_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for name in ("LUMEN_TOKEN", "LUMEN_URL", "LUMEN_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


# --- SSE parsing -----------------------------------------------------------------------


def test_sse_parser_yields_json_payloads_and_skips_comments_and_retry() -> None:
    lines = ["retry: 3000", "", ": heartbeat", "", 'data: {"a": 1}', "", "data:[2]", ""]
    assert list(parse_sse(lines)) == [{"a": 1}, [2]]


def test_sse_parser_joins_multiline_data_and_flushes_the_last_event() -> None:
    lines = ["event: status", 'data: {"a":', "data:  2}", "", 'data: {"b": 3}']
    assert list(parse_sse(lines)) == [{"a": 2}, {"b": 3}]


def test_sse_parser_raises_stream_ended_with_the_reason_on_an_end_event() -> None:
    lines = ['data: {"a": 1}', "", "event: end", 'data: {"reason": "token expired"}', ""]
    stream = parse_sse(lines)
    assert next(stream) == {"a": 1}
    with pytest.raises(StreamEnded, match="token expired"):
        next(stream)


def test_settled_waits_for_own_items_or_an_empty_queue() -> None:
    busy = status(queue=2, processing=1, done=1)
    assert not settled(busy)
    assert settled(busy, ["d0.jpg"])
    assert not settled(busy, ["d0.jpg", "q0.jpg"])
    assert settled(status(done=3))


# --- progress bar ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("done", "total", "expected"),
    [
        (0, 10, "[..........]   0%"),
        (5, 10, "[#####.....]  50%"),
        (10, 10, "[##########] 100%"),
        (12, 10, "[##########] 100%"),
        (0, 0, "[##########] 100%"),
    ],
)
def test_bar_renders_fraction_clamped(done: int, total: int, expected: str) -> None:
    assert render_bar(done, total, width=10) == expected


def test_bar_redraws_in_place_and_ends_with_a_newline() -> None:
    out = io.StringIO()
    bar = Bar(out)
    bar.draw(1, 4, "one")
    bar.draw(4, 4, "all")
    bar.finish()
    text = out.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n")
    assert "100% all" in text


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.5 KB"),
        (12_897_485, "12.3 MB"),
        (20 * 1024**3, "20 GB"),
    ],
)
def test_byte_counts_read_in_powers_of_1024_without_a_trailing_zero(n: int, expected: str) -> None:
    assert human_bytes(n) == expected


# --- zipping and uploads ---------------------------------------------------------------


def make_photos(root: Path) -> Path:
    (root / "trip" / "day2").mkdir(parents=True)
    (root / "trip" / "a.jpg").write_bytes(b"jpg")
    (root / "trip" / "day2" / "b.PNG").write_bytes(b"png")
    (root / "trip" / "notes.txt").write_text("no")
    (root / "trip" / ".hidden.jpg").write_bytes(b"x")
    return root / "trip"


def test_directory_zip_holds_only_visible_images_with_relative_names(tmp_path: Path) -> None:
    dest = tmp_path / "out.zip"
    assert zip_directory(make_photos(tmp_path), dest) == 2
    with zipfile.ZipFile(dest) as zf:
        assert sorted(zf.namelist()) == ["a.jpg", "day2/b.PNG"]


def test_multipart_body_declares_its_exact_length_and_reports_progress(tmp_path: Path) -> None:
    file = tmp_path / "doc.pdf"
    file.write_bytes(b"%PDF" * 100_000)
    seen: list[tuple[int, int]] = []
    headers, chunks = multipart_body("upload_file", file, lambda s, t: seen.append((s, t)))
    body = b"".join(chunks)
    assert int(headers["Content-Length"]) == len(body)
    assert len(seen) > 1 and seen[-1] == (400_000, 400_000)


def test_uploading_a_directory_posts_a_zip_to_upload(tmp_path: Path, capsys: Any) -> None:
    fake = FakeLumen(
        {("POST", "/upload"): httpx.Response(200, json={"message": "ok", "queued": ["a", "b"]})}
    )
    assert run(["upload", str(make_photos(tmp_path))], fake.client()) == 0
    field, data = multipart_file(fake.requests[0])
    assert field == "zip_file"
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert sorted(zf.namelist()) == ["a.jpg", "day2/b.PNG"]
    captured = capsys.readouterr()
    assert "2 queued" in captured.out and "100%" in captured.err


def test_uploading_a_pdf_uses_the_pdf_route_and_lists_duplicates(
    tmp_path: Path, capsys: Any
) -> None:
    pdf = tmp_path / "doc.pdf"
    pdf.write_bytes(b"%PDF-1.7 fake")
    answer = {"message": "Processed 1 pages", "queued": [], "duplicates": {"p1": "same as x"}}
    fake = FakeLumen({("POST", "/upload/pdf"): httpx.Response(200, json=answer)})
    assert run(["upload", str(pdf)], fake.client()) == 0
    assert multipart_file(fake.requests[0]) == ("upload_file", b"%PDF-1.7 fake")
    assert fake.requests[0].headers["authorization"] == "Bearer tok"
    assert "duplicate  p1: same as x" in capsys.readouterr().out


def test_uploading_an_unsupported_file_fails_before_any_request(
    tmp_path: Path, capsys: Any
) -> None:
    (tmp_path / "x.tar").write_bytes(b"x")
    fake = FakeLumen({})
    assert run(["upload", str(tmp_path / "x.tar")], fake.client()) == 2
    assert fake.requests == [] and ".zip, a .pdf" in capsys.readouterr().err


# --- errors and exit codes -------------------------------------------------------------


def test_a_4xx_prints_the_server_detail_and_exits_2(capsys: Any) -> None:
    fake = FakeLumen({("POST", "/search"): httpx.Response(400, json={"detail": "give a query"})})
    assert run(["search", "dog"], fake.client()) == 2
    err = capsys.readouterr().err
    assert "give a query (HTTP 400)" in err and "Traceback" not in err


def test_a_validation_error_list_is_readable(capsys: Any) -> None:
    detail = [{"loc": ["body", "password"], "msg": "Field required", "type": "missing"}]
    fake = FakeLumen({("POST", "/signup"): httpx.Response(422, json={"detail": detail})})
    assert run(["signup", "ann", "--password", "pw"], fake.client(None)) == 2
    assert "password: Field required" in capsys.readouterr().err


def test_a_5xx_exits_1(capsys: Any) -> None:
    fake = FakeLumen({("GET", "/done"): httpx.Response(503, json={"detail": "restarting"})})
    assert run(["done"], fake.client()) == 1
    assert "restarting" in capsys.readouterr().err


def test_an_unreachable_server_exits_1_without_a_traceback(capsys: Any) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused", request=request)

    client = LumenClient("http://lumen.test", "tok", transport=httpx.MockTransport(refuse))
    assert run(["status"], client) == 1
    err = capsys.readouterr().err
    assert "Connection refused" in err and "Traceback" not in err


def test_a_401_suggests_logging_in(capsys: Any) -> None:
    fake = FakeLumen({("GET", "/done"): httpx.Response(401, json={"detail": "not authenticated"})})
    assert run(["done"], fake.client(None)) == 2
    assert "lumen login" in capsys.readouterr().err


# --- argument parsing and auth ---------------------------------------------------------


def test_global_options_work_before_or_after_the_command() -> None:
    parser = build_parser()
    before = parser.parse_args(["--url", "http://a:1", "search", "cat", "-k", "3"])
    after = parser.parse_args(["search", "--url", "http://a:1", "cat", "--image", "x.png"])
    assert (before.url, before.query, before.k, before.image) == ("http://a:1", "cat", 3, None)
    assert (after.url, after.query, after.k, after.image) == ("http://a:1", "cat", 5, Path("x.png"))


def test_reset_refuses_without_yes() -> None:
    fake = FakeLumen({("POST", "/reset"): httpx.Response(200, json={"message": "gone"})})
    assert run(["reset"], fake.client()) == 2
    assert fake.requests == []
    assert run(["reset", "--yes"], fake.client()) == 0


def test_login_saves_a_private_token_that_later_commands_send(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LUMEN_PASSWORD", "s3cret")
    fake = FakeLumen(
        {
            ("POST", "/login"): httpx.Response(200, json={"access_token": "T1"}),
            ("GET", "/done"): httpx.Response(200, json={"done_images": []}),
        }
    )
    assert run(["login", "ann"], fake.client(None)) == 0
    assert dict(httpx.QueryParams(fake.requests[0].content.decode())) == {
        "username": "ann",
        "password": "s3cret",
    }
    assert token_path().read_text() == "T1"
    assert stat.S_IMODE(token_path().stat().st_mode) == 0o600
    assert run(["done"], fake.client(None)) == 0
    assert fake.requests[1].headers["authorization"] == "Bearer T1"


def test_the_token_option_wins_over_the_saved_token(monkeypatch: pytest.MonkeyPatch) -> None:
    token_path().parent.mkdir(parents=True)
    token_path().write_text("saved")
    monkeypatch.setenv("LUMEN_TOKEN", "from-env")
    fake = FakeLumen({("GET", "/done"): httpx.Response(200, json={"done_images": ["a"]})})
    assert run(["done", "--token", "flag"], fake.client(None)) == 0
    assert run(["done"], fake.client(None)) == 0
    assert [r.headers["authorization"] for r in fake.requests] == ["Bearer flag", "Bearer from-env"]


# --- commands --------------------------------------------------------------------------


def test_search_prints_similarity_with_three_decimals(capsys: Any) -> None:
    hit = {"filename": "uploads/ann/dog.jpg", "caption": "a dog", "similarity": 0.87654}
    fake = FakeLumen({("POST", "/search"): httpx.Response(200, json={"results": [hit]})})
    assert run(["search", "a dog", "-k", "2"], fake.client()) == 0
    form = dict(httpx.QueryParams(fake.requests[0].content.decode()))
    assert form == {"query": "a dog", "top_k": "2"}
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["similarity", "filename", "caption"]
    assert lines[1].split() == ["0.877", "uploads/ann/dog.jpg", "a", "dog"]


def test_search_by_image_sends_the_file(tmp_path: Path) -> None:
    img = tmp_path / "q.png"
    img.write_bytes(b"\x89PNG fake")
    fake = FakeLumen({("POST", "/search"): httpx.Response(200, json={"results": []})})
    assert run(["search", "--image", str(img), "--json"], fake.client()) == 0
    body = fake.requests[0].content
    assert b'name="image"; filename="q.png"' in body and b"\x89PNG fake" in body


def test_status_snapshot_prints_counts_and_errors(capsys: Any) -> None:
    snap = status(queue=3, processing=1, done=2, errors={"bad.jpg": "cannot decode"})
    fake = FakeLumen({("GET", "/status"): sse(snap)})
    assert run(["status"], fake.client()) == 0
    out = capsys.readouterr().out
    assert "done 2  queued 3  processing 1  errors 1" in out
    assert "bad.jpg: cannot decode" in out


def test_status_follow_stops_once_the_queue_is_empty(capsys: Any) -> None:
    snaps = [status(queue=2, processing=1), status(queue=1, processing=1, done=1), status(done=3)]
    fake = FakeLumen({("GET", "/status"): sse(*snaps, status(queue=9))})
    assert run(["status", "--follow"], fake.client()) == 0
    err = capsys.readouterr().err
    assert "  0%" in err and " 33%" in err
    assert err.rstrip().endswith("100% done 3  queued 0  processing 0  errors 0")
    assert "queued 9" not in err


def test_delete_url_encodes_the_item_path() -> None:
    fake = FakeLumen({})
    fake.routes[("DELETE", "/queue/uploads/ann/my photo#1.jpg")] = httpx.Response(
        200, json={"message": "Removed 1"}
    )
    assert run(["delete", "uploads/ann/my photo#1.jpg"], fake.client()) == 0
    assert fake.requests[0].url.raw_path == b"/queue/uploads/ann/my%20photo%231.jpg"


def test_ask_uploads_waits_for_its_pages_and_prints_the_answer(tmp_path: Path, capsys: Any) -> None:
    pdf = tmp_path / "guide.pdf"
    pdf.write_bytes(b"%PDF-1.7")
    pages = ["uploads/ann/pdfs/guide_page_001.jpg", "uploads/ann/pdfs/guide_page_002.jpg"]
    busy = status(queue=5) | {"done": pages[:1]}
    ready = status(queue=5) | {"done": pages}
    top = {"filename": pages[1], "similarity": 0.8123, "doc": "guide", "page": 2}
    answer = {"query": "q", "top_result": top, "gemini_answer": "Turn it off and on."}
    fake = FakeLumen(
        {
            ("POST", "/upload/pdf"): httpx.Response(200, json={"message": "ok", "queued": pages}),
            ("GET", "/status"): sse(busy, ready),
            ("POST", "/search/pdf"): httpx.Response(200, json=answer),
        }
    )
    assert run(["ask", str(pdf), "how do I fix it?"], fake.client()) == 0
    assert [r.url.path for r in fake.requests] == ["/upload/pdf", "/status", "/search/pdf"]
    out = capsys.readouterr().out
    assert "guide, page 2 (similarity 0.812)" in out and "Turn it off and on." in out


def test_ask_without_an_answer_prints_the_reason(capsys: Any) -> None:
    top = {"filename": "p.jpg", "similarity": 0.5, "doc": "d", "page": 1}
    answer = {"top_result": top, "gemini_answer": None, "gemini_reason": "no API key set"}
    fake = FakeLumen({("POST", "/search/pdf"): httpx.Response(200, json=answer)})
    assert run(["ask", "--no-upload", "x.pdf", "why?"], fake.client()) == 0
    assert "No answer: no API key set" in capsys.readouterr().out


def test_workers_and_events_print_one_snapshot(capsys: Any) -> None:
    workers = {"w1": {"status": "health", "metrics": {"cpu": 35.2, "mem": 68.7}}}
    events = [{"ts": 0, "type": "worker_dead", "worker": "w3"}]
    fake = FakeLumen(
        {("GET", "/monitor/worker"): sse(workers), ("GET", "/monitor/events"): sse(events)}
    )
    assert run(["workers"], fake.client()) == 0
    assert run(["events"], fake.client()) == 0
    out = capsys.readouterr().out
    assert "w1      health  35.2%  68.7%" in out
    assert "worker_dead" in out and "worker=w3" in out


# --- usage, quotas and signed links ----------------------------------------------------


def test_usage_prints_bytes_and_items_against_the_quota(capsys: Any) -> None:
    fake = FakeLumen({("GET", "/usage"): usage(12_897_485, 40, 20 * 1024**3, 200_000)})
    assert run(["usage"], fake.client()) == 0
    assert capsys.readouterr().out == "Storage: 12.3 MB of 20 GB, 40 of 200,000 items\n"
    assert fake.requests[0].headers["authorization"] == "Bearer tok"


def test_usage_reads_a_zero_quota_as_unlimited(capsys: Any) -> None:
    fake = FakeLumen({("GET", "/usage"): usage(2048, 3)})
    assert run(["usage"], fake.client()) == 0
    assert capsys.readouterr().out == "Storage: 2 KB (unlimited), 3 items (unlimited)\n"


def test_usage_json_prints_the_services_numbers(capsys: Any) -> None:
    fake = FakeLumen({("GET", "/usage"): usage(5, 1, 0, 10)})
    assert run(["usage", "--json"], fake.client()) == 0
    assert json.loads(capsys.readouterr().out) == {
        "bytes": 5,
        "items": 1,
        "max_bytes": 0,
        "max_items": 10,
    }


def test_an_upload_crossing_the_quota_lists_what_was_skipped_and_then_the_usage(
    tmp_path: Path, capsys: Any
) -> None:
    answer = {
        "message": "Stored 1 image; 1 more were not stored (see skipped): quota full.",
        "queued": ["uploads/ann/a.jpg"],
        "skipped": {"day2/b.PNG": "quota exceeded"},
    }
    fake = FakeLumen(
        {
            ("POST", "/upload"): httpx.Response(200, json=answer),
            ("GET", "/usage"): usage(3, 1, 0, 1),
        }
    )
    assert run(["upload", str(make_photos(tmp_path))], fake.client()) == 0
    assert [r.url.path for r in fake.requests] == ["/upload", "/usage"]
    out = capsys.readouterr().out.splitlines()
    assert out[1:] == [
        "  skipped    day2/b.PNG: quota exceeded",
        "Storage: 3 B (unlimited), 1 of 1 items",
    ]


def test_a_quota_refusal_prints_the_servers_detail_and_exits_2(tmp_path: Path, capsys: Any) -> None:
    body = {"detail": "your storage quota is full", "code": "quota_exceeded", "limit": "x"}
    fake = FakeLumen({("POST", "/upload"): httpx.Response(413, json=body)})
    assert run(["upload", str(make_photos(tmp_path))], fake.client()) == 2
    assert "error: your storage quota is full (HTTP 413)" in capsys.readouterr().err


def test_a_429_prints_the_detail_and_when_to_try_again(capsys: Any) -> None:
    body = {"detail": "too many uploads in progress", "code": "too_many_uploads"}
    refusal = httpx.Response(429, json=body, headers={"Retry-After": "5"})
    fake = FakeLumen({("GET", "/done"): refusal})
    assert run(["done"], fake.client()) == 2
    err = capsys.readouterr().err
    assert "error: too many uploads in progress (HTTP 429) - try again in 5 s" in err


def test_search_json_prints_the_signed_image_urls_as_given(capsys: Any) -> None:
    link = "/image/uploads/ann/dog.jpg?u=ann&exp=1700003600&sig=abc"
    hit = {"filename": "uploads/ann/dog.jpg", "caption": "", "similarity": 0.5, "image_url": link}
    fake = FakeLumen({("POST", "/search"): httpx.Response(200, json={"results": [hit]})})
    assert run(["search", "dog", "--json"], fake.client()) == 0
    assert json.loads(capsys.readouterr().out)[0]["image_url"] == link


def test_search_links_adds_each_signed_link_joined_to_the_service_url(capsys: Any) -> None:
    link = "/image/uploads/ann/dog.jpg?u=ann&exp=1700003600&sig=abc"
    hit = {
        "filename": "uploads/ann/dog.jpg",
        "caption": "a dog",
        "similarity": 0.5,
        "image_url": link,
    }
    fake = FakeLumen({("POST", "/search"): httpx.Response(200, json={"results": [hit]})})
    assert run(["search", "dog", "--links"], fake.client()) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["similarity", "filename", "caption", "link"]
    assert row.split()[-1] == f"http://lumen.test{link}"


def test_status_follow_reopens_a_stream_the_service_ended_and_sends_the_header(
    capsys: Any,
) -> None:
    answers = iter([sse_then_end(status(queue=2)), sse(status(queue=1, done=1), status(done=2))])
    fake = FakeLumen({("GET", "/status"): lambda _: next(answers)})
    assert run(["status", "--follow"], fake.client()) == 0
    assert len(fake.requests) == 2
    for request in fake.requests:
        assert request.headers["authorization"] == "Bearer tok"
        assert request.url.query == b""
    assert capsys.readouterr().err.rstrip().endswith("done 2  queued 0  processing 0  errors 0")


def test_status_follow_gives_up_when_every_stream_ends_at_once(capsys: Any) -> None:
    fake = FakeLumen({("GET", "/status"): lambda _: sse_then_end(reason="account reset")})
    assert run(["status", "--follow"], fake.client()) == 2
    assert len(fake.requests) == 4
    assert "error: account reset" in capsys.readouterr().err


# --- retry and delete of failed items --------------------------------------------------


def retried(*items: str) -> httpx.Response:
    return httpx.Response(200, json={"message": f"Requeued {len(items)}.", "requeued": list(items)})


def conflict(detail: str = "the item has not failed") -> httpx.Response:
    return httpx.Response(409, json={"detail": detail, "code": "conflict"})


def test_client_retry_posts_to_the_items_url_encoded_retry_route() -> None:
    item = "uploads/ann/my photo#1.jpg"
    fake = FakeLumen({("POST", f"/queue/{item}/retry"): retried(item)})
    assert fake.client().retry(item) == {"message": "Requeued 1.", "requeued": [item]}
    request = fake.requests[0]
    assert request.url.raw_path == b"/queue/uploads/ann/my%20photo%231.jpg/retry"
    assert request.headers["authorization"] == "Bearer tok"


def test_client_retry_all_posts_to_retry_errors_and_returns_the_answer() -> None:
    fake = FakeLumen({("POST", "/queue/retry-errors"): retried("a.jpg", "b.jpg")})
    assert fake.client().retry_all()["requeued"] == ["a.jpg", "b.jpg"]
    assert [(r.method, r.url.path) for r in fake.requests] == [("POST", "/queue/retry-errors")]


def test_retry_prints_the_services_message_for_each_item(capsys: Any) -> None:
    fake = FakeLumen(
        {
            ("POST", "/queue/uploads/ann/a.jpg/retry"): retried("uploads/ann/a.jpg"),
            ("POST", "/queue/uploads/ann/b.jpg/retry"): retried("uploads/ann/b.jpg"),
        }
    )
    assert run(["retry", "uploads/ann/a.jpg", "uploads/ann/b.jpg"], fake.client()) == 0
    assert [r.url.path for r in fake.requests] == [
        "/queue/uploads/ann/a.jpg/retry",
        "/queue/uploads/ann/b.jpg/retry",
    ]
    assert capsys.readouterr().out == "Requeued 1.\nRequeued 1.\n"


def test_retry_reports_an_item_that_has_not_failed_and_still_retries_the_others(
    capsys: Any,
) -> None:
    fake = FakeLumen(
        {
            ("POST", "/queue/done.jpg/retry"): conflict("done.jpg has not failed"),
            ("POST", "/queue/bad.jpg/retry"): retried("bad.jpg"),
        }
    )
    assert run(["retry", "done.jpg", "bad.jpg"], fake.client()) == 2
    assert len(fake.requests) == 2
    captured = capsys.readouterr()
    assert captured.err == "error: done.jpg: done.jpg has not failed (HTTP 409)\n"
    assert captured.out == "Requeued 1.\n"


def test_retry_json_lists_what_was_requeued_and_what_was_refused(capsys: Any) -> None:
    fake = FakeLumen({("POST", "/queue/bad.jpg/retry"): retried("bad.jpg")})
    assert run(["retry", "bad.jpg", "ghost.jpg", "--json"], fake.client()) == 2
    assert json.loads(capsys.readouterr().out) == {
        "requeued": ["bad.jpg"],
        "refused": {"ghost.jpg": {"status": 404, "code": None, "detail": "Not Found"}},
    }


def test_retry_stops_at_an_error_that_is_not_about_the_item(capsys: Any) -> None:
    expired = httpx.Response(401, json={"detail": "not authenticated"})
    fake = FakeLumen({("POST", "/queue/a.jpg/retry"): expired})
    assert run(["retry", "a.jpg", "b.jpg"], fake.client()) == 2
    assert len(fake.requests) == 1
    assert "lumen login" in capsys.readouterr().err


def test_retry_all_lists_every_requeued_item(capsys: Any) -> None:
    fake = FakeLumen({("POST", "/queue/retry-errors"): retried("a.jpg", "b.jpg")})
    assert run(["retry", "--all"], fake.client()) == 0
    assert capsys.readouterr().out.splitlines() == [
        "Requeued 2.",
        "  requeued  a.jpg",
        "  requeued  b.jpg",
    ]


def test_retry_all_json_prints_the_services_answer(capsys: Any) -> None:
    fake = FakeLumen({("POST", "/queue/retry-errors"): retried()})
    assert run(["retry", "--all", "--json"], fake.client()) == 0
    assert json.loads(capsys.readouterr().out) == {"message": "Requeued 0.", "requeued": []}


@pytest.mark.parametrize("argv", [["retry"], ["retry", "a.jpg", "--all"]])
def test_retry_needs_either_items_or_all_before_any_request(argv: list[str], capsys: Any) -> None:
    fake = FakeLumen({})
    assert run(argv, fake.client()) == 2
    assert fake.requests == [] and "--all" in capsys.readouterr().err


def test_status_with_errors_says_how_to_retry_or_delete_them(capsys: Any) -> None:
    fake = FakeLumen({("GET", "/status"): sse(status(errors={"bad.jpg": "cannot decode"}))})
    assert run(["status"], fake.client()) == 0
    out = capsys.readouterr().out
    assert "lumen retry ITEM" in out and "lumen delete ITEM" in out
    fake = FakeLumen({("GET", "/status"): sse(status(done=1))})
    assert run(["status"], fake.client()) == 0
    assert "lumen retry" not in capsys.readouterr().out


def test_deleting_a_failed_item_prints_the_services_message(capsys: Any) -> None:
    answer = httpx.Response(200, json={"message": "Removed 1 occurrence(s) of bad.jpg from queue."})
    fake = FakeLumen({("DELETE", "/queue/bad.jpg"): answer})
    assert run(["delete", "bad.jpg"], fake.client()) == 0
    assert capsys.readouterr().out == "Removed 1 occurrence(s) of bad.jpg from queue.\n"


def test_reindex_starts_the_job_for_one_user_and_prints_its_progress(
    capsys: pytest.CaptureFixture[str],
) -> None:
    report = {
        "model": "B:b.safetensors",
        "job": "B:b.safetensors",
        "users_on_other_models": ["al"],
        "users": {"al": {"state": "running", "model": "B:b.safetensors", "total": 9, "done": 4}},
    }
    fake = FakeLumen({("POST", "/admin/reindex"): httpx.Response(200, json=report)})
    assert run(["reindex", "--user", "al"], client=fake.client()) == 0
    [request] = fake.requests
    assert request.content == b"user=al"
    out = capsys.readouterr().out
    assert "job: B:b.safetensors" in out and "running" in out and "4/9" in out


def test_reindex_status_only_reads_the_progress() -> None:
    report = {"model": "B", "job": None, "users_on_other_models": [], "users": {}}
    fake = FakeLumen({("GET", "/admin/reindex"): httpx.Response(200, json=report)})
    assert run(["reindex", "--status", "--json"], client=fake.client()) == 0
    assert [r.method for r in fake.requests] == ["GET"]
