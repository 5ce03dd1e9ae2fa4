"""ZIP uploads: safe extraction of the images inside an archive into one user folder.

`ZipExtraction` opens an archive and runs, before a single member is read, every check
that can refuse the archive as a whole; iterating `images()` then stores and hands out the
images one by one, so a caller can queue them while the rest is still being extracted.
`extract_images` does both and returns every image at once.

Rules, in the order they are applied:

- The archive as a whole is refused (InvalidUpload) when it is not a ZIP, is damaged or
  truncated, has no members, or has any encrypted member; and (LimitExceeded, naming the
  limit) when it has more than `max_zip_members` members (counted from the end records
  before the directory is loaded, see `zipdir`), declares more than `max_uncompressed_bytes`
  in total, expands as a whole more than `max_compression_ratio` times its own size (past
  1 MiB), or any member over 4 KiB declares a compression ratio above it. All of this is
  read from the end records and the central directory when the archive is opened, so a
  refused archive has stored nothing: no image is written before the whole archive passed.
- The same limits are enforced again on the bytes actually decompressed, because headers
  can lie. `zipfile` never hands out more than a member's declared size (and a member
  whose data does not match its header fails its CRC), so these checks only back up the
  ones above; a member that trips one anyway is skipped with the reason, like any other
  bad member, and images already handed out stay valid.
- Directories, hidden entries (any path component starting with '.') and `__MACOSX/` are
  skipped silently.
- Symbolic links, absolute paths, drive letters and `..` components are skipped with a
  reason, never followed. Nothing is ever written outside `dest_dir` in any case: every
  file is stored under a sanitized basename of its own (subfolders are flattened).
- Nested archives, members that are not JPEG/PNG/HEIC (sniffed from bytes), members over
  `max_image_bytes` or `max_image_pixels`, and damaged members are skipped with a reason;
  the rest of the archive is still extracted.
- Bytes after an image's end (JPEG EOI, PNG IEND, HEIC's last box) are not stored, so zero
  padding never takes disk; the hash is that of the stored bytes.
- With an `Allowance` (per-user quota, free-space floor), members are stored in archive
  order until one does not fit; it and every later member are skipped with the stop's
  reason ("quota exceeded"), and `stopped_by` names the setting.
- An image, once handed out by `images()`, belongs to the caller (who removes it if it is
  not kept); a member being stored when an error escapes leaves no partial file.

Names keep unicode letters and digits, `-`, `_`, `.` and space; anything else becomes `_`,
and names are capped at 150 UTF-8 bytes. The extension is the original one lowercased when
it names the sniffed format, else the format's canonical one. An existing file is never
overwritten: `photo.jpg` becomes `photo_1.jpg`, `photo_2.jpg`, ... (claimed with O_EXCL).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
import unicodedata
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, BinaryIO

from lumen.errors import InvalidUpload, LimitExceeded
from lumen.ingest.images import ImageFormat, sniff_format, trim_after_end, validate_image_file
from lumen.ingest.zipdir import survey_zip
from lumen.quota import Allowance, UploadStopped

if TYPE_CHECKING:
    from lumen.config import LimitSettings

CHUNK_BYTES = 1024 * 1024
MAX_NAME_BYTES = 150
# Below these sizes deflate's own overhead makes a ratio meaningless; what small members
# could still add up to is bounded by the archive-wide ratio.
MEMBER_RATIO_FLOOR_BYTES = 4096
ARCHIVE_RATIO_FLOOR_BYTES = 1024 * 1024
_ARCHIVE_MAGIC = (
    b"PK\x03\x04",
    b"PK\x05\x06",
    b"7z\xbc\xaf\x27\x1c",
    b"Rar!\x1a\x07",
    b"\x1f\x8b",
    b"\xfd7zXZ\x00",
)
_DRIVE = re.compile(r"^[A-Za-z]:")
_UTF8_FLAG = 0x800


@dataclass(frozen=True)
class ExtractedImage:
    """An image stored on disk: where it is, what it was called, what it holds."""

    path: Path
    original_name: str
    sha256: str
    format: ImageFormat
    size: int  # bytes stored (after trimming), as charged to the quota


@dataclass(frozen=True)
class SkippedMember:
    """An archive member that was not extracted, and why (shown to the user)."""

    name: str
    reason: str


@dataclass
class ExtractResult:
    images: list[ExtractedImage] = field(default_factory=list)
    skipped: list[SkippedMember] = field(default_factory=list)
    stopped_by: str | None = None  # the quota or floor setting that stopped the extraction
    stop_reason: str = ""


class _SkipMember(Exception):
    """Internal: this member is skipped with the given reason."""


class ZipExtraction:
    """One archive, refused or accepted as a whole when opened; `images()` then stores it.

    Construct it (or use it as a context manager, which closes the archive) to run every
    whole-archive check; iterate `images()` once to store the images in archive order.
    While and after iterating, `skipped`, `stopped_by` and `stop_reason` say what was left
    out and why, and `members_left` how many members are still to be read.
    """

    def __init__(
        self,
        zip_path: Path | BinaryIO,
        dest_dir: Path,
        limits: LimitSettings,
        allowance: Allowance | None = None,
    ) -> None:
        survey = survey_zip(zip_path, limits.max_zip_members)
        if survey.members == 0:
            raise InvalidUpload("the ZIP archive is empty")
        archive = _open_zip(zip_path)
        try:
            infos = archive.infolist()
            check_declared_limits(infos, limits, survey.archive_bytes)
        except BaseException:
            archive.close()
            raise
        self._archive = archive
        self._infos = infos
        self._dest_dir = dest_dir
        self._limits = limits
        self._allowance = allowance
        self._budget = _Budget(limits, survey.archive_bytes)
        self._started = False
        self.members_left = len(infos)
        self.skipped: list[SkippedMember] = []
        self.stopped_by: str | None = None  # the quota or floor setting that stopped it
        self.stop_reason = ""

    def __enter__(self) -> ZipExtraction:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._archive.close()

    def images(self) -> Iterator[ExtractedImage]:
        """Store the archive's images one by one, handing out each as soon as it is stored."""
        if self._started:
            raise RuntimeError("a ZipExtraction is iterated once")
        self._started = True
        self._dest_dir.mkdir(parents=True, exist_ok=True)
        for info in self._infos:
            image = self._extract_one(info)
            self.members_left -= 1
            if image is not None:
                yield image

    def _extract_one(self, info: zipfile.ZipInfo) -> ExtractedImage | None:
        name = member_name(info)
        try:
            if self.stopped_by is not None:
                self._skip_after_stop(info, name)
                return None
            return _extract_member(
                self._archive, info, name, self._dest_dir, self._limits, self._budget,
                self._allowance,
            )  # fmt: skip
        except _SkipMember as skip:
            self.skipped.append(SkippedMember(name, str(skip)))
        except UploadStopped as stop:
            self.stopped_by, self.stop_reason = stop.setting, stop.reason
            self.skipped.append(SkippedMember(name, stop.reason))
        return None

    def _skip_after_stop(self, info: zipfile.ZipInfo, name: str) -> None:
        """After a quota stop: list the member (unless it is junk) without reading it."""
        if info.is_dir() or _is_junk(name):
            return
        _refuse_unsafe(info, name)
        self.skipped.append(SkippedMember(name, self.stop_reason))


def extract_images(
    zip_path: Path | BinaryIO,
    dest_dir: Path,
    limits: LimitSettings,
    allowance: Allowance | None = None,
) -> ExtractResult:
    """Extract every acceptable image in `zip_path` into `dest_dir` (see module rules).

    On an error nothing is left behind: the images already stored are removed.
    """
    result = ExtractResult()
    with ZipExtraction(zip_path, dest_dir, limits, allowance) as extraction:
        try:
            for image in extraction.images():
                result.images.append(image)
        except BaseException:
            for image in result.images:
                image.path.unlink(missing_ok=True)
            raise
    result.skipped = extraction.skipped
    result.stopped_by, result.stop_reason = extraction.stopped_by, extraction.stop_reason
    return result


def _open_zip(zip_path: Path | BinaryIO) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as exc:
        raise InvalidUpload(
            f"the upload is not a readable ZIP archive (damaged or truncated?): {exc}"
        ) from exc


def check_declared_limits(
    infos: list[zipfile.ZipInfo], limits: LimitSettings, archive_bytes: int
) -> None:
    """Refuse an archive whose central directory alone is over a limit or encrypted."""
    if not infos:
        raise InvalidUpload("the ZIP archive is empty")
    if len(infos) > limits.max_zip_members:
        raise LimitExceeded(
            f"the archive has {len(infos)} members; the limit is {limits.max_zip_members}",
            "max_zip_members",
        )
    if any(info.flag_bits & 0x1 for info in infos):
        raise InvalidUpload("encrypted archives are not supported; upload an unencrypted ZIP")
    total = sum(info.file_size for info in infos)
    if total > limits.max_uncompressed_bytes:
        raise LimitExceeded(
            f"the archive expands to {total} bytes; the limit is {limits.max_uncompressed_bytes}",
            "max_uncompressed_bytes",
        )
    _check_archive_ratio(total, archive_bytes, limits)
    for info in infos:
        _check_ratio(info.filename, info.file_size, info.compress_size, limits)


def _check_ratio(name: str, size: int, compressed: int, limits: LimitSettings) -> None:
    ratio = limits.max_compression_ratio
    if size > MEMBER_RATIO_FLOOR_BYTES and size > max(compressed, 1) * ratio:
        raise LimitExceeded(
            f"'{name}' expands more than {ratio:g}x; this looks like a ZIP bomb",
            "max_compression_ratio",
        )


def _check_archive_ratio(total: int, archive_bytes: int, limits: LimitSettings) -> None:
    ratio = limits.max_compression_ratio
    if total > ARCHIVE_RATIO_FLOOR_BYTES and total > max(archive_bytes, 1) * ratio:
        raise LimitExceeded(
            f"the archive expands to more than {ratio:g}x its own size; this looks like a ZIP bomb",
            "max_compression_ratio",
        )


class _Budget:
    """Counts bytes really decompressed across the whole archive."""

    def __init__(self, limits: LimitSettings, archive_bytes: int) -> None:
        self.limits = limits
        self.archive_bytes = archive_bytes
        self.used = 0

    def check(self, total_after: int) -> None:
        limit = self.limits.max_uncompressed_bytes
        if total_after > limit:
            raise LimitExceeded(f"the archive expands past {limit} bytes", "max_uncompressed_bytes")
        _check_archive_ratio(total_after, self.archive_bytes, self.limits)


def member_name(info: zipfile.ZipInfo) -> str:
    """The member's name as its author meant it (UTF-8 names written without the flag)."""
    name = info.filename
    if not info.flag_bits & _UTF8_FLAG:
        with contextlib.suppress(UnicodeEncodeError, UnicodeDecodeError):
            name = name.encode("cp437").decode("utf-8")
    return name.replace("\\", "/")


def _extract_member(
    archive: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    name: str,
    dest_dir: Path,
    limits: LimitSettings,
    budget: _Budget,
    allowance: Allowance | None,
) -> ExtractedImage | None:
    if info.is_dir() or _is_junk(name):
        return None
    _refuse_unsafe(info, name)
    if info.file_size > limits.max_image_bytes:
        raise _SkipMember(f"larger than the {limits.max_image_bytes}-byte limit for one image")
    if allowance is not None:
        allowance.admit(info.file_size)

    def check(real: int) -> None:
        if real > info.file_size:
            raise InvalidUpload(f"'{name}' holds more data than its header declares")
        budget.check(budget.used + real)
        _check_ratio(name, real, info.compress_size, limits)

    try:
        with archive.open(info) as handle:
            image = _store(handle, name, dest_dir, limits, check, allowance)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
        raise _SkipMember(f"damaged or unsupported member: {exc}") from exc
    except InvalidUpload as exc:
        raise _SkipMember(str(exc)) from exc
    except LimitExceeded as exc:
        # Pixels, or (only if headers lied past zipfile's own checks) an expansion limit:
        # the archive as a whole was accepted when opened, so only this member goes.
        raise _SkipMember(str(exc)) from exc
    budget.used += info.file_size
    return image


def _is_junk(name: str) -> bool:
    parts = [p for p in name.split("/") if p]
    hidden = any(p.startswith(".") and p not in (".", "..") for p in parts)
    return not parts or parts[0] == "__MACOSX" or hidden


def _refuse_unsafe(info: zipfile.ZipInfo, name: str) -> None:
    if stat.S_ISLNK(info.external_attr >> 16):
        raise _SkipMember("symbolic links are not extracted")
    if name.startswith("/") or _DRIVE.match(name) or ".." in name.split("/"):
        raise _SkipMember("unsafe path (absolute, or reaching outside the archive)")


def _store(
    handle: IO[bytes],
    name: str,
    dest_dir: Path,
    limits: LimitSettings,
    check: Callable[[int], None],
    allowance: Allowance | None,
) -> ExtractedImage:
    """Stream `handle` into a new file in `dest_dir`, validating it as an image."""
    head = handle.read(CHUNK_BYTES)
    fmt = sniff_format(head)
    if fmt is None:
        if head.startswith(_ARCHIVE_MAGIC):
            raise InvalidUpload("nested archives are not extracted")
        raise InvalidUpload("the image is not a JPEG, PNG or HEIC image")
    partial = dest_dir / f".partial-{uuid.uuid4().hex}"
    try:
        digest = _copy(handle, head, partial, check)
        if trim_after_end(partial, fmt):
            digest = _hash_file(partial)
        validate_image_file(partial, limits.max_image_pixels, what="the image")
        size = partial.stat().st_size
        if allowance is not None:
            allowance.charge(size, digest)
        final = claim_unique_path(dest_dir, safe_stem(PurePosixPath(name).stem), _ext(name, fmt))
        os.replace(partial, final)
    finally:
        partial.unlink(missing_ok=True)
    return ExtractedImage(final, name, digest, fmt, size)


def _copy(handle: IO[bytes], head: bytes, out_path: Path, check: Callable[[int], None]) -> str:
    digest = hashlib.sha256()
    total = 0
    fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as out:
        chunk = head
        while chunk:
            total += len(chunk)
            check(total)
            digest.update(chunk)
            out.write(chunk)
            chunk = handle.read(CHUNK_BYTES)
    return digest.hexdigest()


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _ext(name: str, fmt: ImageFormat) -> str:
    suffix = PurePosixPath(name).suffix.lower()
    return suffix if suffix in fmt.extensions else fmt.extension


def safe_stem(raw: str, fallback: str = "image") -> str:
    """A filename stem with only unicode letters/digits and `-_. `; never hidden or empty."""
    text = unicodedata.normalize("NFC", raw)
    kept = "".join(ch if ch.isalnum() or ch in "-_. " else "_" for ch in text)
    kept = kept.strip(" .")
    return kept or fallback


def _fit(stem: str, tail: str) -> str:
    """Cut `stem` (on a character boundary) so that stem + tail fits MAX_NAME_BYTES."""
    room = MAX_NAME_BYTES - len(tail.encode("utf-8"))
    cut = stem.encode("utf-8")[:room].decode("utf-8", errors="ignore").rstrip(" .")
    return (cut or "image") + tail


def claim_unique_path(dest_dir: Path, stem: str, ext: str) -> Path:
    """Create (O_EXCL) and return `stem.ext`, or `stem_1.ext`, `stem_2.ext`, ... if taken."""
    counter = 0
    while True:
        tail = f"_{counter}{ext}" if counter else ext
        candidate = dest_dir / _fit(stem, tail)
        try:
            os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            counter += 1
            continue
        return candidate
