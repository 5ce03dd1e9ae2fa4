"""Admission control: per-user and total caps, refused at once with a 429 that says why."""

from __future__ import annotations

import pytest

from lumen.admission import Admission, Work
from lumen.config import AdmissionSettings
from lumen.errors import TooManyQuestions, TooManyStreams, TooManyUploads


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
