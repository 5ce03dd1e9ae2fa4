"""Model weights before a replica loads them: staged copies, `lumen models pull`, the check.

Staged weights are open_clip weights copied once, with a sha256, into a directory on the
shared data root (`LUMEN_MODEL__STAGED_DIR`), so that no replica start ever reaches the
model hub. The layout is one folder per architecture and pretrained tag:

    <staged_dir>/<name>/<tag>/<file>               the weights, as downloaded
    <staged_dir>/<name>/<tag>/lumen-staged.json    {"file", "sha256", "bytes", "source", ...}

Architectures whose open_clip config names Hugging Face repositories (`text_cfg`'s
`hf_tokenizer_name`, `hf_model_name`: the multilingual and SigLIP presets) also need that
repository's tokenizer files, and for `hf_model_name` its `config.json`, every time a replica
builds the model. `lumen models pull` stages them beside the weights, one folder a repository,
and a replica with staged weights loads them from there, never from the hub:

    <staged_dir>/_hf/<repo id>/<file>              tokenizer and config files, top level only
    <staged_dir>/_hf/<repo id>/lumen-staged.json   {"repo", "roles", "files": {name: {...}}}

`check_model(settings)` answers whether a replica could load the model the settings name,
with a sentence that says what to set when it could not; deploy.py runs it before it deploys.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import importlib.util
import json
import os
import re
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
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
    with _downloaded(folder, source, progress) as (tmp, got, size):
        target = folder / _file_name(source)
        (folder / MANIFEST).unlink(missing_ok=True)  # never a manifest over a half-swapped file
        tmp.replace(target)
    staged = StagedWeights(name, tag, target, got, size, source.url)
    meta = {**asdict(staged), "file": target.name, "pulled_at": time.time()}
    _write_atomically(folder / MANIFEST, json.dumps(meta, indent=2) + "\n")
    return staged, True


def _file_name(source: Source) -> str:
    return Path(source.file_name or unquote(urlsplit(source.url).path)).name or "weights"


@contextlib.contextmanager
def _downloaded(
    folder: Path, source: Source, progress: Callable[[int, int | None], None] | None = None
) -> Iterator[tuple[Path, str, int]]:
    """`source` downloaded into a temporary file in `folder`: (that file, sha256, size).

    The bytes are hashed while they stream in; a sha256 other than `source.sha256` (when
    given) is refused before anything is yielded. The caller renames the file into place;
    whatever it leaves is removed.
    """
    if source.sha256 is not None and not _SHA256.match(source.sha256.lower()):
        raise StagedWeightsError(f"--sha256 must be 64 hex digits, not {source.sha256!r}")
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
        yield tmp, got, size
    finally:
        tmp.unlink(missing_ok=True)


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


# ---- Hugging Face files: tokenizers and text-tower configs ----

HF_FOLDER = "_hf"  # under staged_dir; no model name can be this (_SAFE_PART starts alnum)
# What a repository's files are needed for, and the open_clip setting that names it.
TOKENIZER, TEXT_CONFIG = "tokenizer", "text config"
HF_SETTINGS = {TOKENIZER: "hf_tokenizer_name", TEXT_CONFIG: "hf_model_name"}
# Top-level files staged from a repository: configs, vocabularies, SentencePiece models.
HF_PATTERNS = ("*.json", "*.model", "*.txt")
# A tokenizer is there when one of these is; a text config is `config.json`.
_TOKENIZER_FILES = ("tokenizer*.json", "*.model", "vocab.txt", "vocab.json")


@dataclass(frozen=True)
class StagedRepo:
    """One Hugging Face repository's staged files and what its manifest records."""

    repo: str
    folder: Path
    roles: tuple[str, ...]
    files: dict[str, dict[str, Any]]  # name -> {"sha256", "bytes", "source"}


def hf_repos(name: str) -> dict[str, tuple[str, ...]]:
    """The Hugging Face repositories open_clip reads when it builds architecture `name`
    (register a custom config first), each with what it is read for (TOKENIZER, TEXT_CONFIG).

    Read from the model config's `text_cfg`: `hf_tokenizer_name` (open_clip's get_tokenizer
    builds an HFTokenizer from it) and `hf_model_name` (its HFTextEncoder reads the config,
    and with no weights file the weights too). Empty for the plain CLIP architectures.
    """
    import open_clip

    text = (open_clip.get_model_config(name) or {}).get("text_cfg", {})
    repos: dict[str, tuple[str, ...]] = {}
    for role, key in HF_SETTINGS.items():
        if repo := str(text.get(key) or ""):
            repos[repo] = (*repos.get(repo, ()), role)
    return repos


def hf_folder(staged_dir: str | Path, repo: str) -> Path:
    """`<staged_dir>/_hf/<repo id>`; an id that could leave the folder is refused."""
    parts = repo.split("/")
    if len(parts) > 2 or any(not _SAFE_PART.match(p) or p in (".", "..") for p in parts):
        raise StagedWeightsError(f"Hugging Face repository {repo!r} cannot name a folder")
    return Path(staged_dir).expanduser() / HF_FOLDER / repo


def _missing_roles(repo: str, files: list[str], roles: tuple[str, ...]) -> str | None:
    """What `files` lack for `roles`, as a phrase, or None."""
    if TOKENIZER in roles and not any(
        fnmatch.fnmatch(f, pattern) for f in files for pattern in _TOKENIZER_FILES
    ):
        return f"no tokenizer file ({', '.join(_TOKENIZER_FILES)}) of {repo}"
    if TEXT_CONFIG in roles and "config.json" not in files:
        return f"no config.json of {repo}"
    return None


def read_staged_repo(
    staged_dir: str | Path, repo: str, roles: tuple[str, ...], verify: bool = True
) -> StagedRepo:
    """The staged files of Hugging Face repository `repo`, refused unless they serve `roles`;
    with `verify`, each file's size and sha256 checked against the manifest."""
    folder = hf_folder(staged_dir, repo)
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise StagedWeightsError(f"nothing staged for {repo} in {folder}")
    try:
        meta = json.loads(manifest.read_text())
        files = {Path(str(k)).name: dict(v) for k, v in dict(meta["files"]).items()}
        sizes = {k: int(v["bytes"]) for k, v in files.items()}
        sums = {k: str(v["sha256"]) for k, v in files.items()}
    except (ValueError, KeyError, TypeError) as exc:
        raise StagedWeightsError(f"staged manifest {manifest} is unreadable ({exc})") from exc
    lacking = _missing_roles(repo, sorted(files), roles)
    if lacking:
        raise StagedWeightsError(f"{lacking} in {folder}")
    for file_name, size in sizes.items():
        path = folder / file_name
        if not path.is_file():
            raise StagedWeightsError(f"staged file {path} is missing")
        if path.stat().st_size != size:
            raise StagedWeightsError(
                f"staged file {path} is corrupt: {path.stat().st_size} bytes, {size} when pulled"
            )
        if verify and sha256_of(path) != sums[file_name]:
            raise ChecksumMismatch(f"staged file {path} is corrupt: its sha256 changed")
    return StagedRepo(repo, folder, roles, files)


RepoFiles = Callable[[str], list[Source]]


def hub_repo_files(repo: str) -> list[Source]:
    """The files of `repo` on the Hugging Face hub worth staging (HF_PATTERNS, top level),
    pinned to the repository's current revision, with the sha256 the hub publishes for
    LFS files."""
    from huggingface_hub import HfApi, hf_hub_url

    try:
        info = HfApi().model_info(repo, files_metadata=True, timeout=DOWNLOAD_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - offline, unknown repo, gated: say which
        raise StagedWeightsError(f"cannot list {repo} on the model hub: {exc}") from exc
    sources = []
    for sibling in info.siblings or []:
        if _wanted(sibling.rfilename):
            url = hf_hub_url(repo, sibling.rfilename, revision=info.sha)
            sha256 = sibling.lfs.sha256 if sibling.lfs else None
            sources.append(Source(url, sha256, sibling.rfilename))
    return sources


def local_repo_files(root: str | Path) -> RepoFiles:
    """Repository files from a local copy: `<root>/<repo id>/<file>` (e.g. what
    `hf download REPO --local-dir ROOT/REPO` wrote), for nodes that cannot reach the hub."""

    def files(repo: str) -> list[Source]:
        folder = Path(root).expanduser() / repo
        if not folder.is_dir():
            raise StagedWeightsError(f"no folder {folder} for Hugging Face repository {repo}")
        return [Source(str(f), None, f.name) for f in sorted(folder.iterdir()) if _wanted(f.name)]

    return files


def _wanted(file_name: str) -> bool:
    top_level = "/" not in file_name
    return top_level and any(fnmatch.fnmatch(file_name, p) for p in HF_PATTERNS)


def pull_hf_files(
    name: str,
    staged_dir: str | Path,
    repo_files: RepoFiles | None = None,
    progress: Callable[[int, int | None], None] | None = None,
) -> list[tuple[StagedRepo, bool]]:
    """Stage the Hugging Face files architecture `name` needs (`hf_repos`) into
    `<staged_dir>/_hf/`: per repository (its staged files, whether it downloaded).

    A repository already staged and intact is not fetched again. `repo_files` lists what to
    fetch for a repository (default: the hub, `hub_repo_files`); a listing that lacks what
    the model needs is refused before anything is written. The manifest goes last.
    """
    out = []
    for repo, roles in hf_repos(name).items():
        with contextlib.suppress(StagedWeightsError):
            out.append((read_staged_repo(staged_dir, repo, roles), False))
            continue
        sources = (repo_files or hub_repo_files)(repo)
        lacking = _missing_roles(repo, [_file_name(s) for s in sources], roles)
        if lacking:
            raise StagedWeightsError(f"{lacking} to stage, for {name}: nothing was staged")
        folder = hf_folder(staged_dir, repo)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / MANIFEST).unlink(missing_ok=True)
        files: dict[str, dict[str, Any]] = {}
        for source in sources:
            with _downloaded(folder, source, progress) as (tmp, got, size):
                target = folder / _file_name(source)
                tmp.replace(target)
            files[target.name] = {"sha256": got, "bytes": size, "source": source.url}
        meta = {"repo": repo, "roles": list(roles), "files": files, "pulled_at": time.time()}
        _write_atomically(folder / MANIFEST, json.dumps(meta, indent=2) + "\n")
        out.append((StagedRepo(repo, folder, roles, files), True))
    return out


def staged_hf_folders(model: ModelSettings, verify: bool = True) -> dict[str, Path]:
    """For a model with staged weights: each Hugging Face repository it needs -> its staged
    folder. Missing or corrupt files raise StagedWeightsError with the setting to change."""
    if not _uses_staged_weights(model):
        return {}
    folders = {}
    for repo, roles in hf_repos(model.name).items():
        try:
            folders[repo] = read_staged_repo(model.staged_dir or "", repo, roles, verify).folder
        except StagedWeightsError as exc:
            what = " and ".join(f"{r} (text_cfg.{HF_SETTINGS[r]} = {repo!r})" for r in roles)
            command = pull_command(model.name, model.pretrained or "", model.staged_dir or "")
            raise type(exc)(
                f"the Hugging Face {what} files of {model.name} cannot be loaded from "
                f"{STAGED_ENV}={model.staged_dir}: {exc}. Run `{command}` where the hub is "
                f"reachable (or add --hf-from DIR with a local copy), or unset {STAGED_ENV}"
            ) from exc
    return folders


def _uses_staged_weights(model: ModelSettings) -> bool:
    return bool(model.staged_dir and model.pretrained and not model.checkpoint)


def staged_hf_options(model: ModelSettings, folders: dict[str, Path]) -> dict[str, Any]:
    """open_clip `create_model` overrides that read an `hf_model_name` text config from its
    staged folder (`folders`, from `staged_hf_folders`) instead of the hub. The text
    tower's weights come from the staged weights file, so none are fetched for it."""
    import open_clip

    text = dict((open_clip.get_model_config(model.name) or {}).get("text_cfg", {}))
    repo = str(text.get("hf_model_name") or "")
    if repo not in folders:
        return {}
    return {"text_cfg": {**text, "hf_model_name": str(folders[repo]), "hf_model_pretrained": False}}


def staged_tokenizer(model: ModelSettings, folders: dict[str, Path]) -> Any:
    """open_clip's tokenizer for `model`, built from the staged folder of its
    `hf_tokenizer_name` when there is one (as open_clip's get_tokenizer builds it from the
    hub: same context length, mode and keyword arguments), else open_clip's own."""
    import open_clip

    text = dict((open_clip.get_model_config(model.name) or {}).get("text_cfg", {}))
    repo = str(text.get("hf_tokenizer_name") or "")
    if repo not in folders:
        return open_clip.get_tokenizer(model.name, cache_dir=model.cache_dir)
    from open_clip.tokenizer import DEFAULT_CONTEXT_LENGTH, HFTokenizer

    return HFTokenizer(
        str(folders[repo]),
        context_length=text.get("context_length", DEFAULT_CONTEXT_LENGTH),
        tokenizer_mode=text.get("tokenizer_mode"),
        **dict(text.get("tokenizer_kwargs") or {}),
    )


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

    Checked: the architecture is known; `transformers` is installed if it reads Hugging Face
    files; a checkpoint file exists and (with `load`) loads into it; staged weights are there
    and intact (with `load`, their sha256 too), and so are the staged Hugging Face files its
    config names (`hf_tokenizer_name`, `hf_model_name`); otherwise a pretrained tag is known
    and already in open_clip's cache, so no replica start needs the model hub. No weights at
    all (random) passes: tests and benchmarks use that.
    """
    if model.benchmark_null:
        return None
    try:
        check_name(model.name, model.config_file)
    except (ValueError, OSError) as exc:
        return str(exc)
    repos = hf_repos(model.name)
    if repos and not has_transformers():
        return (
            f"{model.name} reads Hugging Face files ({', '.join(repos)}) through the Python "
            "package transformers, which is not installed: `pip install transformers "
            "sentencepiece` (the `hf` extra) on every node, or pick another LUMEN_MODEL__NAME"
        )
    if model.checkpoint:
        return _checkpoint_problem(model, load)
    tag = model.pretrained
    if not tag:
        return None
    if model.staged_dir:  # the manifest vouches for the file, whatever its tag names
        try:
            read_staged(model.staged_dir, model.name, tag, verify=load)
            staged_hf_folders(model, verify=load)
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


def has_transformers() -> bool:
    return importlib.util.find_spec("transformers") is not None


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
