"""Model weights before a replica loads them: staged copies, `lumen models pull`, the check.

Staged weights are open_clip weights copied once, with a sha256, into a directory on the
shared data root (`LUMEN_MODEL__STAGED_DIR`), so that no replica start ever reaches the
model hub. The layout is one folder per architecture and pretrained tag:

    <staged_dir>/<name>/<tag>/<file>               the weights, as downloaded
    <staged_dir>/<name>/<tag>/lumen-staged.json    {"file", "sha256", "bytes", "source", ...}

`check_model(settings)` answers whether a replica could load the model the settings name,
with a sentence that says what to set when it could not; deploy.py runs it before it deploys.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urlsplit

from lumen.config import ModelSettings

MANIFEST = "lumen-staged.json"
CHUNK_BYTES = 4 * 1024**2
DOWNLOAD_TIMEOUT_S = 60.0
_SAFE_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# Settings named in the messages, so an operator knows what to change.
CHECKPOINT_ENV = "LUMEN_MODEL__CHECKPOINT"
STAGED_ENV = "LUMEN_MODEL__STAGED_DIR"


class StagedWeightsError(ValueError):
    """Staged weights are missing, incomplete or corrupt; the message says what to run."""


class ChecksumMismatch(StagedWeightsError):
    """Downloaded or staged bytes do not have the sha256 they must have."""


@dataclass(frozen=True)
class StagedWeights:
    """One staged file and what its manifest records."""

    name: str
    tag: str
    file: Path
    sha256: str
    bytes: int
    source: str


def staged_folder(staged_dir: str | Path, name: str, tag: str) -> Path:
    """`<staged_dir>/<name>/<tag>`; a name or tag that could leave the folder is refused."""
    for what, part in (("model name", name), ("pretrained tag", tag)):
        if not _SAFE_PART.match(part) or part in (".", ".."):
            raise StagedWeightsError(f"{what} {part!r} cannot name a staged-weights folder")
    return Path(staged_dir).expanduser() / name / tag


def pull_command(name: str, tag: str, staged_dir: str | Path) -> str:
    return f"lumen models pull {name} {tag} --to {staged_dir}"


def read_staged(staged_dir: str | Path, name: str, tag: str, verify: bool = True) -> StagedWeights:
    """The staged weights of `name`/`tag`; with `verify`, their size and sha256 checked."""
    folder = staged_folder(staged_dir, name, tag)
    manifest = folder / MANIFEST
    again = f"run `{pull_command(name, tag, staged_dir)}`"
    if not manifest.is_file():
        raise StagedWeightsError(
            f"no staged weights for {name} {tag} in {folder} ({STAGED_ENV}={staged_dir}): "
            f"{again}, or unset {STAGED_ENV}"
        )
    try:
        meta = json.loads(manifest.read_text())
        staged = StagedWeights(
            name, tag, folder / Path(str(meta["file"])).name, str(meta["sha256"]),
            int(meta["bytes"]), str(meta.get("source", "")),
        )  # fmt: skip
    except (ValueError, KeyError, TypeError) as exc:
        raise StagedWeightsError(
            f"staged manifest {manifest} is unreadable ({exc}): {again}"
        ) from exc
    if not staged.file.is_file():
        raise StagedWeightsError(f"staged weights file {staged.file} is missing: {again}")
    size = staged.file.stat().st_size
    if size != staged.bytes:
        raise StagedWeightsError(
            f"staged weights file {staged.file} is corrupt: {size} bytes, "
            f"{staged.bytes} when pulled: {again}"
        )
    if verify:
        digest = sha256_of(staged.file)
        if digest != staged.sha256:
            raise ChecksumMismatch(
                f"staged weights file {staged.file} is corrupt: its sha256 is {digest}, "
                f"{staged.sha256} when pulled: {again}"
            )
    return staged


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


# ---- pull: download once, with a checksum ----


@dataclass(frozen=True)
class Source:
    """Where weights come from: a URL (http, https, file) and the sha256 they must have."""

    url: str
    sha256: str | None = None
    file_name: str | None = None


def hub_source(name: str, tag: str) -> Source:
    """open_clip's download location for `name`/`tag`, with the checksum the hub publishes."""
    import open_clip

    cfg: dict[str, Any] = open_clip.get_pretrained_cfg(name, tag)
    if not cfg:
        raise StagedWeightsError(f"open_clip has no pretrained tag {tag!r} for {name!r}")
    hf_hub = str(cfg.get("hf_hub") or "")
    if hf_hub:
        return _hf_source(hf_hub)
    url = str(cfg.get("url") or "")
    if not url:
        raise StagedWeightsError(f"open_clip lists no download for {name} {tag}")
    expected = url.split("/")[-2] if "openaipublic" in url else None
    return Source(url, expected if expected and _SHA256.match(expected) else None)


def _hf_source(hf_hub: str) -> Source:
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    repo, filename = os.path.split(hf_hub)  # "org/model/" names no file: try the defaults
    candidates = [filename] if filename else []
    candidates += ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    last: Exception | None = None
    for candidate in candidates:
        url = hf_hub_url(repo, candidate)
        try:
            meta = get_hf_file_metadata(url, timeout=DOWNLOAD_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - try the next file name, report the last
            last = exc
            continue
        etag = (meta.etag or "").strip('"').lower()
        return Source(url, etag if _SHA256.match(etag) else None, candidate)
    raise StagedWeightsError(f"cannot reach the model hub for {repo}: {last}")


def open_source(url: str) -> tuple[BinaryIO, int | None]:
    """A readable stream for `url` (http, https, file:// or a plain path) and its length."""
    parts = urlsplit(url)
    if parts.scheme in ("", "file"):
        path = Path(unquote(parts.path) if parts.scheme else url).expanduser()
        if not path.is_file():
            raise StagedWeightsError(f"source file not found: {path}")
        return path.open("rb"), path.stat().st_size
    if parts.scheme not in ("http", "https"):
        raise StagedWeightsError(f"unsupported source {url!r}: use http(s)://, file:// or a path")
    response = urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S)  # noqa: S310 - checked
    length = response.headers.get("Content-Length")
    return response, int(length) if length and length.isdigit() else None


def pull(
    name: str,
    tag: str,
    staged_dir: str | Path,
    source: Source | None = None,
    progress: Callable[[int, int | None], None] | None = None,
) -> tuple[StagedWeights, bool]:
    """Stage `name`/`tag` into `staged_dir` once: (the staged weights, whether it downloaded).

    Already staged and intact: nothing is fetched. The bytes are hashed while they stream
    into a temporary file beside the target, which is renamed into place only when the
    sha256 matches (`source.sha256`, else what the hub publishes); the manifest goes last.
    """
    check_name(name)
    folder = staged_folder(staged_dir, name, tag)
    with contextlib.suppress(StagedWeightsError):
        staged = read_staged(staged_dir, name, tag)
        if source is None or source.sha256 in (None, staged.sha256):
            return staged, False
    source = source or hub_source(name, tag)
    if source.sha256 is not None and not _SHA256.match(source.sha256.lower()):
        raise StagedWeightsError(f"--sha256 must be 64 hex digits, not {source.sha256!r}")
    file_name = source.file_name or Path(unquote(urlsplit(source.url).path)).name or "weights"
    folder.mkdir(parents=True, exist_ok=True)
    stream, length = open_source(source.url)
    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=".pull-")
    tmp = Path(tmp_name)
    try:
        digest, size = hashlib.sha256(), 0
        with stream, os.fdopen(fd, "wb") as out:
            while chunk := stream.read(CHUNK_BYTES):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
                if progress is not None:
                    progress(size, length)
            out.flush()
            os.fsync(out.fileno())
        got = digest.hexdigest()
        if source.sha256 is not None and got != source.sha256.lower():
            raise ChecksumMismatch(
                f"checksum mismatch for {source.url}: sha256 {got}, expected {source.sha256}; "
                "nothing was staged"
            )
        target = folder / Path(file_name).name
        (folder / MANIFEST).unlink(missing_ok=True)  # never a manifest over a half-swapped file
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    staged = StagedWeights(name, tag, target, got, size, source.url)
    meta = {**asdict(staged), "file": target.name, "pulled_at": time.time()}
    _write_atomically(folder / MANIFEST, json.dumps(meta, indent=2) + "\n")
    return staged, True


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


# ---- the check deploy.py runs ----


def check_name(name: str, config_file: str | None = None) -> None:
    """Raise ValueError unless open_clip knows architecture `name` (after `config_file`)."""
    import open_clip

    if config_file:
        from lumen.embedding import register_model_config

        register_model_config(Path(config_file), name)
    if name not in open_clip.list_models():
        known = ", ".join(m for m in open_clip.list_models() if m.startswith("ViT-B"))
        raise ValueError(
            f"unknown model name {name!r} (LUMEN_MODEL__NAME); open_clip knows e.g. {known}; "
            "a custom architecture needs LUMEN_MODEL__CONFIG_FILE"
        )


def check_model(model: ModelSettings, load: bool = True) -> str | None:
    """Why a replica could not load `model`, or None when it could.

    Checked: the architecture is known; a checkpoint file exists and (with `load`) loads
    into it; staged weights are there and intact (with `load`, their sha256 too); otherwise
    a pretrained tag is known and already in open_clip's cache, so no replica start needs the
    model hub. No weights at all (random) passes: tests and benchmarks use that.
    """
    if model.benchmark_null:
        return None
    try:
        check_name(model.name, model.config_file)
    except (ValueError, OSError) as exc:
        return str(exc)
    if model.checkpoint:
        return _checkpoint_problem(model, load)
    tag = model.pretrained
    if not tag:
        return None
    if model.staged_dir:  # the manifest vouches for the file, whatever its tag names
        try:
            read_staged(model.staged_dir, model.name, tag, verify=load)
        except StagedWeightsError as exc:
            return str(exc)
        return None
    import open_clip

    if tag not in open_clip.list_pretrained_tags_by_model(model.name):
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(model.name)) or "none"
        return (
            f"unknown pretrained tag {tag!r} for {model.name} (LUMEN_MODEL__PRETRAINED); "
            f"open_clip has: {tags}; or set {CHECKPOINT_ENV} to a local file"
        )
    if cached_weights(model.name, tag, model.cache_dir) is None:
        return (
            f"the weights {model.name} {tag} are not in open_clip's cache, so every replica "
            "start would download them from the model hub. Stage them once with "
            f"`{pull_command(model.name, tag, '<shared dir>')}` and set {STAGED_ENV}, "
            f"or set {CHECKPOINT_ENV} to a local .safetensors/.pt file"
        )
    return None


def _checkpoint_problem(model: ModelSettings, load: bool) -> str | None:
    path = Path(model.checkpoint or "").expanduser()
    if not path.is_file():
        return (
            f"model checkpoint not found: {path} ({CHECKPOINT_ENV}); set it to an existing "
            f".safetensors or .pt file, or unset it and use staged weights ({STAGED_ENV})"
        )
    if not load:
        return None
    import open_clip

    try:
        open_clip.create_model(model.name, pretrained=str(path.resolve()), device="cpu")
    except Exception as exc:  # noqa: BLE001 - whatever the loader says, the file does not load
        detail = " ".join(str(exc).split())[:300] or type(exc).__name__
        return (
            f"model checkpoint {path} ({CHECKPOINT_ENV}) does not load into {model.name}: "
            f"{detail}. Set {CHECKPOINT_ENV} to weights of this architecture, or use staged "
            f"weights ({STAGED_ENV})"
        )
    return None


def cached_weights(name: str, tag: str, cache_dir: str | None = None) -> Path | None:
    """The file open_clip would load for `name`/`tag` from its cache, if it is there."""
    import open_clip
    from open_clip.pretrained import _get_safe_alternatives

    cfg: dict[str, Any] = open_clip.get_pretrained_cfg(name, tag)
    hf_hub = str(cfg.get("hf_hub") or "")
    if hf_hub:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(hf_hub)
        filename = filename or "open_clip_pytorch_model.bin"
        for candidate in [*_get_safe_alternatives(filename), filename]:
            found = try_to_load_from_cache(repo, candidate, cache_dir=cache_dir)
            if isinstance(found, str) and Path(found).is_file():
                return Path(found)
    url = str(cfg.get("url") or "")
    if url:
        base = Path(cache_dir).expanduser() if cache_dir else Path.home() / ".cache" / "clip"
        target = base / os.path.basename(url)
        if target.is_file():
            return target
    return None


def derived_dir(model: ModelSettings) -> Path | None:
    """Where data computed from staged weights is kept (caption label vectors), or None.

    Keyed by the weights' sha256, so weights pulled again never meet stale derived data.
    """
    if model.checkpoint or not model.staged_dir or not model.pretrained:
        return None
    try:
        staged = read_staged(model.staged_dir, model.name, model.pretrained, verify=False)
    except StagedWeightsError:
        return None
    return staged.file.parent / f"derived-{staged.sha256[:16]}"


def staged_load_options(model: ModelSettings) -> dict[str, Any]:
    """What open_clip's pretrained config would have set, for weights loaded from a file.

    A tag sets the activation (OpenAI's quick GELU) and the preprocessing; a file path
    sets neither, so staged weights pass them explicitly.
    """
    import open_clip

    if not model.pretrained:
        return {}
    cfg: dict[str, Any] = open_clip.get_pretrained_cfg(model.name, model.pretrained)
    keys = ("mean", "std", "interpolation", "resize_mode")
    options: dict[str, Any] = {}
    if cfg.get("quick_gelu"):
        options["force_quick_gelu"] = True
    preprocess = {k: cfg[k] for k in keys if k in cfg}
    if preprocess:
        options["force_preprocess_cfg"] = preprocess
    return options
