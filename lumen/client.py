"""LumenClient: the HTTP API's verbs over httpx, for the CLI, scripts and integration tests.

Errors::

    ClientError            anything this module raises on purpose
    ├── ApiError           the service answered 4xx/5xx; `status`, `detail`, `code`, `retry_after_s`
    ├── StreamEnded        an event stream said `event: end` (credential expired, account reset)
    └── Unreachable        no answer at all (connection refused, DNS, timeout)
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
import zipfile
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".heic"})
CHUNK_BYTES = 256 * 1024

Progress = Callable[[int, int], None]


class ClientError(Exception):
    """Base of every error this module raises on purpose."""


class ApiError(ClientError):
    """The service answered with an error status; `detail` is its message, `code` its stable
    name (when the body has one) and `retry_after_s` its `Retry-After` (429s and 503s)."""

    def __init__(
        self, status: int, detail: str, code: str | None = None, retry_after_s: int | None = None
    ) -> None:
        super().__init__(status, detail)
        self.status = status
        self.detail = detail
        self.code = code
        self.retry_after_s = retry_after_s

    @classmethod
    def of(cls, response: httpx.Response) -> ApiError:
        """The error an error response carries, its body already read."""
        try:
            body = response.json()
            code = body.get("code") if isinstance(body, dict) else None
        except ValueError:
            code = None
        retry = response.headers.get("retry-after", "")
        return cls(
            response.status_code,
            error_detail(response),
            code if isinstance(code, str) else None,
            int(retry) if retry.isdigit() else None,
        )

    def __str__(self) -> str:
        return f"{self.detail} (HTTP {self.status})"


class StreamEnded(ClientError):
    """The service ended an event stream on purpose (`event: end`); `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Unreachable(ClientError):
    """The service could not be reached."""


def error_detail(response: httpx.Response) -> str:
    """The human part of an error body: `detail` as a string, a 422 list, or the raw text."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        return response.text.strip() or response.reason_phrase
    if isinstance(detail, list):
        return "; ".join(_validation_line(d) for d in detail)
    return str(detail) if detail is not None else response.reason_phrase


def _validation_line(d: Any) -> str:
    if not isinstance(d, dict):
        return str(d)
    loc = ".".join(str(p) for p in d.get("loc", []) if p != "body")
    return f"{loc}: {d.get('msg', '')}" if loc else str(d.get("msg", ""))


END_EVENT = "end"


def parse_sse(lines: Iterable[str]) -> Iterator[Any]:
    """JSON payloads of a Server-Sent Events stream; comments and `retry:` skipped.

    An `event: end` (the service closing the stream on purpose) raises StreamEnded with
    its reason instead of being yielded as a payload.
    """
    data: list[str] = []
    event = ""
    for line in lines:
        if line == "":
            if event == END_EVENT:
                raise StreamEnded(_end_reason(data))
            if data:
                yield json.loads("\n".join(data))
            data, event = [], ""
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif line.startswith("event:"):
            event = line[6:].strip()
    if event == END_EVENT:
        raise StreamEnded(_end_reason(data))
    if data:
        yield json.loads("\n".join(data))


def _end_reason(data: list[str]) -> str:
    try:
        reason = json.loads("\n".join(data)).get("reason")
    except (ValueError, AttributeError):
        reason = None
    return str(reason) if reason else "the service ended the stream"


def multipart_body(
    field: str, path: Path, progress: Progress | None = None
) -> tuple[dict[str, str], Iterator[bytes]]:
    """Headers and a streamed multipart body for one file; `progress(sent, total)` per chunk."""
    boundary = secrets.token_hex(16)
    filename = path.name.replace('"', "_").replace("\r", "_").replace("\n", "_")
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
        f'filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    size = path.stat().st_size
    headers = {
        "Content-Type": f"multipart/form-data; boundary={boundary}",
        "Content-Length": str(len(head) + size + len(tail)),
    }

    def chunks() -> Iterator[bytes]:
        yield head
        sent = 0
        with path.open("rb") as f:
            while chunk := f.read(CHUNK_BYTES):
                sent += len(chunk)
                if progress:
                    progress(sent, size)
                yield chunk
        yield tail

    return headers, chunks()


def zip_directory(folder: Path, dest: Path) -> int:
    """Zip the images under `folder` (recursively, hidden files skipped); returns how many."""
    count = 0
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as zf:
        for file in sorted(folder.rglob("*")):
            rel = file.relative_to(folder)
            if any(p.startswith(".") for p in rel.parts) or not file.is_file():
                continue
            if file.suffix.lower() in IMAGE_SUFFIXES:
                zf.write(file, rel.as_posix())
                count += 1
    return count


@contextmanager
def upload_source(path: Path) -> Iterator[tuple[str, str, Path]]:
    """(route, form field, file) for a .zip, a .pdf or a directory zipped to a temp file."""
    if path.is_dir():
        fd, name = tempfile.mkstemp(prefix=f"{path.name or 'upload'}-", suffix=".zip")
        os.close(fd)
        tmp = Path(name)
        try:
            if zip_directory(path, tmp) == 0:
                raise ClientError(f"{path} holds no .jpg/.jpeg/.png/.heic images")
            yield "/upload", "zip_file", tmp
        finally:
            tmp.unlink(missing_ok=True)
    elif not path.is_file():
        raise ClientError(f"{path}: no such file or directory")
    elif path.suffix.lower() == ".pdf":
        yield "/upload/pdf", "upload_file", path
    elif path.suffix.lower() == ".zip":
        yield "/upload", "zip_file", path
    else:
        raise ClientError(f"{path}: upload a .zip, a .pdf or a directory of images")


class LumenClient:
    """One user's session with the service; pass `transport` or `http` to inject a fake."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        token: str | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        http: httpx.Client | None = None,
        timeout_s: float = 120.0,
    ) -> None:
        self.http = http or httpx.Client(
            base_url=url, transport=transport, timeout=httpx.Timeout(timeout_s, connect=10.0)
        )
        self.token = token

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> LumenClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        headers = {**self._auth(), **kw.pop("headers", {})}
        try:
            response = self.http.request(method, path, headers=headers, **kw)
        except httpx.TransportError as exc:
            raise Unreachable(f"cannot reach {self.http.base_url}: {exc}") from None
        if response.is_error:
            raise ApiError.of(response)
        return response.json()

    def signup(self, username: str, password: str) -> str:
        body = self._call("POST", "/signup", json={"username": username, "password": password})
        return str(body["message"])

    def login(self, username: str, password: str) -> str:
        body = self._call("POST", "/login", data={"username": username, "password": password})
        self.token = str(body["access_token"])
        return self.token

    def upload(self, path: Path, progress: Progress | None = None) -> dict[str, Any]:
        """Upload a .zip, a .pdf or a directory of images; the service's JSON answer."""
        with upload_source(path) as (route, field, file):
            headers, body = multipart_body(field, file, progress)
            return dict(self._call("POST", route, content=body, headers=headers))

    def search(
        self, query: str | None = None, image: Path | None = None, top_k: int = 5
    ) -> list[dict[str, Any]]:
        data = {"top_k": str(top_k), **({"query": query} if query else {})}
        if image is None:
            return list(self._call("POST", "/search", data=data)["results"])
        with image.open("rb") as f:
            files = {"image": (image.name, f, "application/octet-stream")}
            return list(self._call("POST", "/search", data=data, files=files)["results"])

    def search_pdf(self, query: str, top_k: int = 1) -> dict[str, Any]:
        return dict(self._call("POST", "/search/pdf", data={"query": query, "top_k": str(top_k)}))

    def usage(self) -> dict[str, int]:
        """`{"bytes", "items", "max_bytes", "max_items"}`: what the caller stores against the
        quota (a max of 0 means unlimited)."""
        body = self._call("GET", "/usage")
        return {k: int(body[k]) for k in ("bytes", "items", "max_bytes", "max_items")}

    def done(self) -> list[str]:
        return list(self._call("GET", "/done")["done_images"])

    def delete(self, item: str) -> str:
        """Remove a waiting or failed item (and its file); the service's message."""
        return str(self._call("DELETE", f"/queue/{quote(item, safe='/')}")["message"])

    def retry(self, item: str) -> dict[str, Any]:
        """Queue one failed item again with a fresh retry budget: `{"message", "requeued"}`;
        ApiError 409 (`conflict`) when it has not failed, 404 when it is unknown."""
        return dict(self._call("POST", f"/queue/{quote(item, safe='/')}/retry"))

    def retry_all(self) -> dict[str, Any]:
        """Queue every failed item again: `{"message", "requeued": [items]}`."""
        return dict(self._call("POST", "/queue/retry-errors"))

    def reset(self) -> str:
        return str(self._call("POST", "/reset")["message"])

    def reindex(self, user: str | None = None, start: bool = False) -> dict[str, Any]:
        """Operators: start re-embedding (`start`) or read its progress; `user` alone."""
        if start:
            return dict(self._call("POST", "/admin/reindex", data={"user": user} if user else {}))
        return dict(self._call("GET", "/admin/reindex", params={"user": user} if user else {}))

    def events(self, path: str, read_timeout_s: float = 60.0) -> Generator[Any, None, None]:
        """Every JSON payload of the SSE route `path` (/status, /monitor/worker, ...), sent
        with the bearer header; StreamEnded when the service ends the stream on purpose."""
        timeout = httpx.Timeout(10.0, read=read_timeout_s)
        try:
            with self.http.stream("GET", path, headers=self._auth(), timeout=timeout) as r:
                if r.is_error:
                    r.read()
                    raise ApiError.of(r)
                yield from parse_sse(r.iter_lines())
        except httpx.TransportError as exc:
            raise Unreachable(f"cannot read {self.http.base_url}{path}: {exc}") from None

    def snapshot(self, path: str) -> Any:
        """The first payload of an SSE route, then the stream is closed."""
        stream = self.events(path)
        try:
            return next(stream)
        except StopIteration:
            raise ClientError(f"{path} closed without sending anything") from None
        finally:
            stream.close()


def pending(status: dict[str, Any]) -> int:
    return int(status.get("queue", 0)) + len(status.get("processing", []))


def settled(status: dict[str, Any], items: Iterable[str] = ()) -> bool:
    """True once `items` are done or failed, or nothing is waiting or running."""
    finished = set(status.get("done", [])) | set(status.get("errors", {}))
    wanted = set(items)
    return pending(status) == 0 or (bool(wanted) and wanted <= finished)
