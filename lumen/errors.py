"""The project's one exception tree; the ingress maps each class to an HTTP status.

    LumenError
    ├── BadRequest                 400  the request is malformed or a parameter is out of range
    │   ├── InvalidUpload          400  an archive, image or PDF we cannot or will not read
    │   └── ModelMismatch          409  an index built with another model/dimension
    │       └── SpaceSwitched      409  the space switched model mid-search (searched again)
    ├── LimitExceeded              413  an input is over a configured limit (names the limit)
    │   └── QuotaExceeded          413  the user's storage quota (bytes or items) is full
    ├── Unauthorized               401  missing, expired or forged credentials
    ├── Forbidden                  403  authenticated, but not allowed
    │   └── SignupClosed           403  public signup is off; an operator creates accounts
    ├── NotFound                   404  no such thing in the caller's space
    ├── Conflict                   409  the thing already exists
    ├── TooManyRequests            429  slow down (carries retry_after_s)
    │   ├── TooManyStreams         429  over the per-user or total open-stream cap
    │   ├── TooManyUploads         429  over the per-user cap on uploads in progress
    │   └── TooManyQuestions       429  over the per-user cap on PDF questions in progress
    ├── ServiceUnavailable         503  a dependency (Ray, Redis, a model) is not answering
    │   └── Busy                   503  a bounded pool is full; retry soon (carries retry_after_s)
    └── InsufficientStorage        507  the server's data disk is below its free-space floor

Fields live in `args` so instances survive pickling across Ray.
"""

from __future__ import annotations


class LumenError(Exception):
    """Base class: `code` is stable, `status` is the HTTP status, args[0] is the message."""

    code = "error"
    status = 500

    def __init__(self, message: str, *args: object) -> None:
        super().__init__(message, *args)

    @property
    def message(self) -> str:
        return str(self.args[0])

    def __str__(self) -> str:
        return self.message


class BadRequest(LumenError):
    """The request is malformed or a parameter is out of range."""

    code = "bad_request"
    status = 400


class InvalidUpload(BadRequest):
    """An archive, image or PDF we cannot or will not read."""

    code = "invalid_upload"


class ModelMismatch(BadRequest):
    """The user's index was built with another model or dimension."""

    code = "model_mismatch"
    status = 409


class SpaceSwitched(ModelMismatch):
    """The space moved to another model between a query's encoding and its search (an
    upgrade's switch); the search service encodes the query again."""

    code = "space_switched"


class LimitExceeded(LumenError):
    """An input is over a configured limit; args: (message, limit_name)."""

    code = "limit_exceeded"
    status = 413

    def __init__(self, message: str, limit: str = "") -> None:
        super().__init__(message, limit)

    @property
    def limit(self) -> str:
        return str(self.args[1])


class QuotaExceeded(LimitExceeded):
    """The user's storage quota is full; args: (message, setting name)."""

    code = "quota_exceeded"
    status = 413


class Unauthorized(LumenError):
    """Missing, expired or forged credentials."""

    code = "unauthorized"
    status = 401


class Forbidden(LumenError):
    """Authenticated, but not allowed to do this."""

    code = "forbidden"
    status = 403


class SignupClosed(Forbidden):
    """Public signup is switched off; an operator creates accounts with the CLI."""

    code = "signup_closed"


class NotFound(LumenError):
    """No such thing in the caller's space."""

    code = "not_found"
    status = 404


class Conflict(LumenError):
    """The thing already exists."""

    code = "conflict"
    status = 409


class TooManyRequests(LumenError):
    """Slow down; args: (message, retry_after_s)."""

    code = "too_many_requests"
    status = 429

    def __init__(self, message: str, retry_after_s: int = 60) -> None:
        super().__init__(message, retry_after_s)

    @property
    def retry_after_s(self) -> int:
        return int(self.args[1])


class TooManyStreams(TooManyRequests):
    """Over the per-user or total cap on open event streams; args: (message, retry_after_s)."""

    code = "too_many_streams"


class TooManyUploads(TooManyRequests):
    """Over the per-user cap on uploads in progress; args: (message, retry_after_s)."""

    code = "too_many_uploads"


class TooManyQuestions(TooManyRequests):
    """Over the per-user cap on PDF questions in progress; args: (message, retry_after_s)."""

    code = "too_many_questions"


class ServiceUnavailable(LumenError):
    """A dependency (Ray, Redis, the model) is not answering."""

    code = "service_unavailable"
    status = 503


class Busy(ServiceUnavailable):
    """A bounded pool is full, so the call is refused at once; args: (message, retry_after_s)."""

    code = "busy"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message, retry_after_s)

    @property
    def retry_after_s(self) -> int:
        return int(self.args[1])


class InsufficientStorage(LumenError):
    """The server's data disk is below its free-space floor; nothing was stored."""

    code = "insufficient_storage"
    status = 507
