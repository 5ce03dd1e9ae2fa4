"""The error tree: errors cross process boundaries (Ray pickles them) with their fields."""

from __future__ import annotations

import pickle

from lumen.errors import LimitExceeded, LumenError, TooManyRequests


def test_errors_keep_their_fields_through_pickling() -> None:
    exc = pickle.loads(pickle.dumps(LimitExceeded("too big", "max_upload_bytes")))
    assert isinstance(exc, LumenError) and exc.limit == "max_upload_bytes" and exc.status == 413
    slow = pickle.loads(pickle.dumps(TooManyRequests("wait", 42)))
    assert slow.retry_after_s == 42 and str(slow) == "wait"
