"""Per-user storage quotas and the data disk's free-space floor, charged file by file.

An upload opens an `Allowance` from the user's current usage: it is refused at once
(QuotaExceeded, 413) when the quota is already full and (InsufficientStorage, 507) when the
data disk is below `min_free_bytes`. While the upload is stored, every file is admitted
before it is written (an item left, and room on the disk above the floor for its declared
size) and charged after (its stored bytes within the byte quota). The first file that does
not fit raises `UploadStopped`; the caller keeps what was stored before it and lists the
rest as skipped with the stop's reason.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from lumen.errors import InsufficientStorage, QuotaExceeded

if TYPE_CHECKING:
    from lumen.config import LimitSettings

QUOTA_REASON = "quota exceeded"
LOW_DISK_REASON = "the server is low on disk space"

DiskFree = Callable[[Path], int]


class Usage(Protocol):
    """What a user's space holds now: stored file bytes and items."""

    @property
    def bytes(self) -> int: ...

    @property
    def items(self) -> int: ...


def disk_free_bytes(path: Path) -> int:
    """Free bytes on the file system holding `path` (or its nearest existing parent)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


class UploadStopped(Exception):
    """A file does not fit; args: (reason shown per skipped member, setting name)."""

    @property
    def reason(self) -> str:
        return str(self.args[0])

    @property
    def setting(self) -> str:
        return str(self.args[1])


@dataclass(frozen=True)
class QuotaReport:
    """A user's usage against the quota (0 = unlimited), as `GET /usage` shows it."""

    bytes: int
    items: int
    max_bytes: int
    max_items: int


def quota_report(usage: Usage, limits: LimitSettings) -> QuotaReport:
    return QuotaReport(usage.bytes, usage.items, limits.user_max_bytes, limits.user_max_items)


def quota_full_message(setting: str, limits: LimitSettings) -> str:
    """What to tell a user whose quota stopped an upload, and what they can do."""
    if setting == "user_max_items":
        quota = f"{limits.user_max_items} items"
    else:
        quota = f"{limits.user_max_bytes} bytes"
    return (
        f"your storage quota of {quota} is full; delete queued items (DELETE /queue/{{item}}) "
        "or reset your space (POST /reset) to make room"
    )


def low_disk_message(limits: LimitSettings) -> str:
    return (
        f"the server's disk is down to its reserve of {limits.min_free_bytes} free bytes; "
        "try again later or tell the operator"
    )


@dataclass
class Allowance:
    """What one upload may still store; every file is admitted, then charged."""

    limits: LimitSettings
    used_bytes: int
    used_items: int
    data_dir: Path
    disk_free: DiskFree = disk_free_bytes
    stored_bytes: int = 0
    stored_items: int = 0
    _hashes: set[str] = field(default_factory=set)

    @classmethod
    def open(
        cls, limits: LimitSettings, usage: Usage, data_dir: Path, disk_free: DiskFree
    ) -> Allowance:
        """Start an upload, or refuse it when the quota is full or the disk below its floor."""
        allowance = cls(limits, usage.bytes, usage.items, data_dir, disk_free)
        for setting, used, limit in allowance._quotas():
            if limit and used >= limit:
                raise QuotaExceeded(quota_full_message(setting, limits), setting)
        if disk_free(data_dir) < limits.min_free_bytes:
            raise InsufficientStorage(low_disk_message(limits))
        return allowance

    def _quotas(self) -> list[tuple[str, int, int]]:
        return [
            ("user_max_items", self.used_items + self.stored_items, self.limits.user_max_items),
            ("user_max_bytes", self.used_bytes + self.stored_bytes, self.limits.user_max_bytes),
        ]

    def admit(self, declared_bytes: int) -> None:
        """Before writing a file of (at most) `declared_bytes`: is there an item and disk left?"""
        limit = self.limits.user_max_items
        if limit and self.used_items + self.stored_items >= limit:
            raise UploadStopped(QUOTA_REASON, "user_max_items")
        if self.disk_free(self.data_dir) - declared_bytes < self.limits.min_free_bytes:
            raise UploadStopped(LOW_DISK_REASON, "min_free_bytes")

    def charge(self, stored_bytes: int, sha256: str) -> None:
        """After a file is written: count it, or stop when it crosses the byte quota.

        A file whose content was already stored by this upload is free: the queue keeps one
        copy of each content and the duplicate file is removed.
        """
        if sha256 in self._hashes:
            return
        limit = self.limits.user_max_bytes
        if limit and self.used_bytes + self.stored_bytes + stored_bytes > limit:
            raise UploadStopped(QUOTA_REASON, "user_max_bytes")
        self._hashes.add(sha256)
        self.stored_bytes += stored_bytes
        self.stored_items += 1
