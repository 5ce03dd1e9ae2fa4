"""Upload bodies joined into large blocks before Starlette's form parser spools them."""

from __future__ import annotations

import asyncio
import os

from starlette.requests import Request
from starlette.types import Message, Receive

from deployments.bodies import in_blocks

KIB = 1024


def _messages(body: bytes, size: int) -> list[Message]:
    pieces = [body[at : at + size] for at in range(0, len(body), size)] or [b""]
    last = len(pieces) - 1
    return [
        {"type": "http.request", "body": piece, "more_body": at < last}
        for at, piece in enumerate(pieces)
    ]


def _receiving(messages: list[Message]) -> Receive:
    queue = list(messages)

    async def receive() -> Message:
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    return receive


def _drain(receive: Receive) -> list[Message]:
    async def run() -> list[Message]:
        out = [await receive()]
        while out[-1]["type"] == "http.request" and out[-1]["more_body"]:
            out.append(await receive())
        return out

    return asyncio.run(run())


def test_small_body_messages_come_out_as_blocks_of_the_block_size() -> None:
    body = os.urandom(10 * 64 * KIB + 100)
    out = _drain(in_blocks(_receiving(_messages(body, 64 * KIB)), block_bytes=256 * KIB))
    assert [len(m["body"]) for m in out] == [256 * KIB, 256 * KIB, 128 * KIB + 100]
    assert [m["more_body"] for m in out] == [True, True, False]
    assert b"".join(m["body"] for m in out) == body


def test_a_body_in_one_message_passes_as_it_is() -> None:
    out = _drain(in_blocks(_receiving(_messages(b"small", 64 * KIB))))
    assert out == [{"type": "http.request", "body": b"small", "more_body": False}]


def test_a_disconnect_while_joining_is_passed_on_and_so_is_one_after_the_body() -> None:
    cut = _messages(os.urandom(3 * KIB), KIB)[:2]  # the client went away after 2 KiB
    receive = in_blocks(_receiving(cut), block_bytes=64 * KIB)
    assert asyncio.run(receive()) == {"type": "http.disconnect"}
    whole = in_blocks(_receiving(_messages(b"abc", 1)), block_bytes=64 * KIB)
    assert _drain(whole)[-1]["body"] == b"abc"
    assert asyncio.run(whole())["type"] == "http.disconnect"


def test_starlette_spools_the_same_file_from_blocks() -> None:
    data = os.urandom(3 * 1024 * KIB + 7)
    boundary = "xyzzy"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="zip_file"; filename="a.zip"\r\n'
            f"Content-Type: application/zip\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/upload",
        "headers": [(b"content-type", f"multipart/form-data; boundary={boundary}".encode())],
    }

    async def spooled() -> bytes:
        receive = in_blocks(_receiving(_messages(body, 16 * KIB)), block_bytes=1024 * KIB)
        form = await Request(scope, receive).form()
        upload = form["zip_file"]
        assert not isinstance(upload, str)
        return await upload.read()

    assert asyncio.run(spooled()) == data
