"""Waiting for a condition in tests: poll it with a deadline, never sleep a fixed time.

A fixed sleep is either too short (a flaky test on a busy machine) or too long (a slow suite);
polling returns as soon as the condition holds and fails with what was awaited when it never
does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

POLL_S = 0.05


def wait_until(
    predicate: Callable[[], T], timeout_s: float, what: str, poll_s: float = POLL_S
) -> T:
    """Call `predicate` until it returns something truthy and return that; fail after
    `timeout_s` seconds with `what` (the condition, in words) in the message."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(poll_s)


async def wait_until_async(
    predicate: Callable[[], T], timeout_s: float, what: str, poll_s: float = 0.001
) -> T:
    """`wait_until` for code on an event loop: yields to the loop between polls."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(poll_s)
