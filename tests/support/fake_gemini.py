"""A local stand-in for the Gemini REST API (`generateContent`), for driving the real SDK.

The google-genai SDK (3.x), given `HttpOptions(base_url=...)`, sends
`POST {base_url}/{api_version}/models/{model}:generateContent` (api_version `v1` by default
in 3.x, `v1beta` in older releases) with the key in the `x-goog-api-key` header; any version
prefix is accepted here.
This server records every request and answers as told: with text, an HTTP error, or not
at all (it holds the connection open until the test ends, to exercise client timeouts).
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def api_key(self) -> str | None:
        return self.headers.get("x-goog-api-key")

    @property
    def parts(self) -> list[dict[str, Any]]:
        return [part for content in self.body.get("contents", []) for part in content["parts"]]

    @property
    def inline_images(self) -> list[tuple[str, bytes]]:
        """(mime type, decoded bytes) of each inline part; the SDK sends URL-safe base64."""
        images = []
        for part in self.parts:
            blob = part.get("inlineData") or part.get("inline_data")
            if blob:
                mime = blob.get("mimeType") or blob.get("mime_type") or ""
                data = blob["data"]
                images.append((mime, base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))))
        return images

    @property
    def prompt_text(self) -> str:
        return "\n".join(part["text"] for part in self.parts if "text" in part)


@dataclass
class _Behaviour:
    mode: str = "text"  # "text" | "error" | "hang"
    text: str = "fake answer"
    status: int = 500


def generate_content_response(text: str) -> dict[str, Any]:
    """The JSON body Gemini returns for one text candidate."""
    return {
        "candidates": [
            {
                "content": {"role": "model", "parts": [{"text": text}]},
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 1, "totalTokenCount": 2},
        "modelVersion": "fake",
    }


def error_response(status: int) -> dict[str, Any]:
    """The JSON body Google APIs return with an HTTP error."""
    phrase = HTTPStatus(status).phrase.upper().replace(" ", "_")
    return {"error": {"code": status, "message": f"fake failure {status}", "status": phrase}}


@dataclass
class FakeGemini:
    """Handle on the running fake: where it listens, what it saw, how it should answer."""

    base_url: str
    requests: list[RecordedRequest] = field(default_factory=list)
    _behaviour: _Behaviour = field(default_factory=_Behaviour)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _release: threading.Event = field(default_factory=threading.Event)

    def respond_with(self, text: str) -> None:
        with self._lock:
            self._behaviour = _Behaviour(mode="text", text=text)

    def fail_with(self, status: int) -> None:
        with self._lock:
            self._behaviour = _Behaviour(mode="error", status=status)

    def hang(self) -> None:
        with self._lock:
            self._behaviour = _Behaviour(mode="hang")

    def _record(self, request: RecordedRequest) -> _Behaviour:
        with self._lock:
            self.requests.append(request)
            return self._behaviour


def _handler_for(fake: FakeGemini) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else {}
            headers = {name.lower(): value for name, value in self.headers.items()}
            behaviour = fake._record(RecordedRequest("POST", self.path, headers, body))
            if behaviour.mode == "hang":
                fake._release.wait()
                return
            if not self.path.endswith(":generateContent"):
                self._send_json(404, error_response(404))
            elif behaviour.mode == "error":
                self._send_json(behaviour.status, error_response(behaviour.status))
            else:
                self._send_json(200, generate_content_response(behaviour.text))

        def _send_json(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=UTF-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            return  # keep test output quiet

    return Handler


@contextmanager
def fake_gemini() -> Iterator[FakeGemini]:
    """Run a fake Gemini endpoint on 127.0.0.1 (a free port) for the `with` block."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    server.daemon_threads = True
    port = server.server_address[1]
    fake = FakeGemini(base_url=f"http://127.0.0.1:{port}")
    server.RequestHandlerClass = _handler_for(fake)
    thread = threading.Thread(
        target=server.serve_forever, args=(0.05,), name="fake-gemini", daemon=True
    )
    thread.start()
    try:
        yield fake
    finally:
        fake._release.set()  # let hung handlers finish so shutdown does not wait on them
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
