"""The uploaded archive on disk: pages that extraction has read are dropped from the cache."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from typing import Any

# os.posix_fadvise's shape: (fd, offset, length, advice)
Advise = Callable[[int, int, int, int], None]


def _advise(fd: int, offset: int, length: int, advice: int) -> None:
    os.posix_fadvise(fd, offset, length, advice)


def file_descriptor(handle: Any) -> int | None:
    """The descriptor of the file under `handle`, or None when its bytes are in memory (a
    small spooled upload) or it has none."""
    inner = getattr(handle, "_file", handle)  # a SpooledTemporaryFile keeps its file here
    try:
        fd = inner.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None
    return fd if isinstance(fd, int) else None


class ReadPages:
    """Tells the kernel, as an archive is read front to back, that the bytes before a point
    are not needed again (POSIX_FADV_DONTNEED). The body of a 1 GB upload would otherwise
    sit in the page cache beside the images extracted from it, crowding out the pages the
    Embedders read next; the spool is deleted after the upload anyway."""

    def __init__(self, handle: Any, advise: Advise | None = None) -> None:
        supported = hasattr(os, "posix_fadvise")
        self.fd = file_descriptor(handle) if supported or advise else None
        self.advise = advise or _advise
        self.done = 0  # bytes [0, done) were dropped already

    def drop_before(self, offset: int) -> None:
        """Drop the cached pages of bytes [0, offset) not dropped yet; never fails."""
        if self.fd is None or offset <= self.done:
            return
        try:
            self.advise(self.fd, self.done, offset - self.done, os.POSIX_FADV_DONTNEED)
        except OSError:
            self.fd = None  # a file system that does not take the advice: stop asking
            return
        self.done = offset
