"""Admission control: per-user and total caps, refused at once with a 429 that says why."""

from __future__ import annotations

import asyncio

import pytest

from lumen.admission import Admission, PenaltyBox, Tarpit, Work
from lumen.config import AdmissionSettings
from lumen.errors import TooManyQuestions, TooManyStreams, TooManyUploads
from tests.support.waiting import wait_until_async


def admission(**kw: int) -> Admission:
    return Admission(AdmissionSettings(**kw))


def test_a_user_over_their_stream_cap_is_refused_and_others_are_not() -> None:
    gate = admission(streams_per_user=2, streams_total=10)
    gate.acquire(Work.STREAM, "alice")
    gate.acquire(Work.STREAM, "alice")
    with pytest.raises(TooManyStreams) as refused:
        gate.acquire(Work.STREAM, "alice")
    assert refused.value.status == 429 and refused.value.code == "too_many_streams"
    assert refused.value.retry_after_s > 0
    gate.acquire(Work.STREAM, "bob")
    assert gate.in_use(Work.STREAM, "alice") == 2 and gate.streams == 3


def test_the_total_stream_cap_holds_across_users() -> None:
    gate = admission(streams_per_user=5, streams_total=3)
    for user in ("a", "b", "c"):
        gate.acquire(Work.STREAM, user)
    with pytest.raises(TooManyStreams, match="server"):
        gate.acquire(Work.STREAM, "d")


def test_a_released_slot_can_be_taken_again() -> None:
    gate = admission(uploads_per_user=1)
    with gate.admit(Work.UPLOAD, "alice"), pytest.raises(TooManyUploads):
        gate.acquire(Work.UPLOAD, "alice")
    with gate.admit(Work.UPLOAD, "alice"):
        assert gate.in_use(Work.UPLOAD, "alice") == 1
    assert gate.in_use(Work.UPLOAD, "alice") == 0 and not gate.per_user


def test_a_failing_block_still_releases_its_slot() -> None:
    gate = admission(pdf_questions_per_user=1)
    with pytest.raises(RuntimeError), gate.admit(Work.PDF_QUESTION, "alice"):
        raise RuntimeError("gemini down")
    with gate.admit(Work.PDF_QUESTION, "alice"), pytest.raises(TooManyQuestions):
        gate.acquire(Work.PDF_QUESTION, "alice")


def test_kinds_are_counted_apart() -> None:
    gate = admission(streams_per_user=1, uploads_per_user=1, streams_total=5)
    gate.acquire(Work.STREAM, "alice")
    gate.acquire(Work.UPLOAD, "alice")
    assert gate.streams == 1


def test_a_throttled_address_waits_out_its_retry_after_and_no_other_does() -> None:
    box = PenaltyBox()
    box.hold("203.0.113.7", 30, now=100.0)
    assert box.wait_s("203.0.113.7", now=110.0) == 20
    assert box.wait_s("198.51.100.1", now=110.0) == 0
    assert box.wait_s("203.0.113.7", now=130.0) == 0 and not box.until


def test_the_penalty_box_stays_bounded() -> None:
    box = PenaltyBox(max_entries=3)
    for i in range(10):
        box.hold(f"10.0.0.{i}", 60, now=float(i))
    assert len(box.until) == 3 and box.wait_s("10.0.0.9", now=10.0) > 0


def test_the_tarpit_holds_at_most_its_limit_at_once() -> None:
    tarpit = Tarpit(delay_s=60, max_held=2)

    async def scenario() -> None:
        held = [asyncio.get_running_loop().create_task(tarpit.hold()) for _ in range(2)]
        await wait_until_async(lambda: tarpit.held == 2, 10, "two answers held")
        await asyncio.wait_for(tarpit.hold(), 5)  # the third goes out at once
        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)
        assert tarpit.held == 0

    asyncio.run(scenario())


def test_a_zero_delay_tarpit_holds_nothing() -> None:
    asyncio.run(asyncio.wait_for(Tarpit(delay_s=0, max_held=5).hold(), 5))
