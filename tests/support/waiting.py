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
    give_up = _deadline(timeout_s, what)
    while not (value := predicate()):
        give_up()
        time.sleep(poll_s)
    return value


async def wait_until_async(
    predicate: Callable[[], T], timeout_s: float, what: str, poll_s: float = 0.001
) -> T:
    """`wait_until` for code on an event loop: yields to the loop between polls."""
    give_up = _deadline(timeout_s, what)
    while not (value := predicate()):
        give_up()
        await asyncio.sleep(poll_s)
    return value


def _deadline(timeout_s: float, what: str) -> Callable[[], None]:
    """A check that fails once `timeout_s` seconds have passed since this call."""
    end = time.monotonic() + timeout_s

    def give_up() -> None:
        if time.monotonic() >= end:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")

    return give_up
