"""Request bodies as the ingress reads them: upload bodies joined into large blocks."""

from __future__ import annotations

from starlette.types import Message, Receive

# Starlette's form parser writes each body message it gets into the upload's spooled file,
# one thread-pool hop per write once the file is on disk; the proxy hands the body over in
# small messages, so an upload is joined into blocks of this size first.
BLOCK_BYTES = 4 * 1024**2


def in_blocks(receive: Receive, block_bytes: int = BLOCK_BYTES) -> Receive:
    """`receive`, with body messages joined into blocks of at least `block_bytes` (the last
    may be shorter); the bytes, their order and the end of the body are unchanged. Any other
    message (a client disconnect) is passed on as it comes, ending the block being joined."""
    ended = False

    async def read() -> Message:
        nonlocal ended
        if ended:
            return await receive()
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return message
            body = message.get("body", b"")
            parts.append(body)
            size += len(body)
            more = bool(message.get("more_body", False))
            if not more or size >= block_bytes:
                ended = not more
                return {"type": "http.request", "body": b"".join(parts), "more_body": more}

    return read
