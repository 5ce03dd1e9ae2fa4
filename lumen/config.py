"""Settings: the one configuration object, read from `LUMEN_*` environment variables."""

from __future__ import annotations

import ipaddress
import os
import secrets
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_PLACEHOLDER_SECRETS = {"", "changeme", "change-me", "secret", "changethis", "please-change"}
_MIN_SECRET_CHARS = 32


class RedisSettings(BaseModel):
    """Where Redis is and how keys are namespaced."""

    url: str = "redis://127.0.0.1:6379/0"
    namespace: str = "lumen"
    # Talk to a Redis Cluster (ElastiCache cluster mode) through redis-py's cluster client;
    # `url` names any one node. A `redis+cluster://` (or `rediss+cluster://`) URL does too.
    cluster: bool = False


class ModelSettings(BaseModel):
    """Which open_clip model the Embedder loads."""

    name: str = "ViT-B-32"
    # An open_clip pretrained tag (downloaded once by open_clip) ...
    pretrained: str | None = "laion2b_s34b_b79k"
    # ... or a local checkpoint file (.pt / .safetensors); wins over `pretrained`.
    checkpoint: str | None = None
    # Optional model-config JSON registered with open_clip before creation (custom archs).
    config_file: str | None = None
    # Where open_clip caches downloaded weights.
    cache_dir: str | None = None
    # Weights staged by `lumen models pull NAME TAG --to DIR` (a folder on the shared data
    # root): with a pretrained tag, replicas load `DIR/<name>/<tag>/` and never the hub.
    staged_dir: str | None = None
    fp16_on_gpu: bool = True
    # With the model on a GPU, decode baseline JPEGs there (nvJPEG, batched); Pillow decodes
    # everything else. No effect without CUDA.
    decode_on_gpu: bool = True
    caption_labels: int = 3
    # Benchmarks only (bench/control_plane.py): no decode, no model, made-up vectors. Refused
    # unless LUMEN_BENCHMARK_NULL_MODEL=i-am-benchmarking is in the environment too.
    benchmark_null: bool = False

    @field_validator("benchmark_null")
    @classmethod
    def _benchmarks_only(cls, value: bool) -> bool:
        if value:
            from lumen.nullmodel import require_benchmark_env

            require_benchmark_env()
        return value


class LimitSettings(BaseModel):
    """Bounds on every input a user controls."""

    max_upload_bytes: int = 2 * 1024**3
    max_zip_members: int = 10_000
    max_uncompressed_bytes: int = 8 * 1024**3
    max_compression_ratio: float = 200.0
    max_image_pixels: int = 89_478_485  # Pillow's own decompression-bomb limit
    max_image_bytes: int = 100 * 1024**2
    max_pdf_pages: int = 500
    max_pdf_text_chars: int = 20_000  # per page; longer page texts are cut when stored
    pdf_dpi: int = 150
    pdf_timeout_s: float = 120.0
    # The PDF render child's address space (RLIMIT_AS) and CPU time (RLIMIT_CPU); 0 = no limit
    pdf_max_memory_bytes: int = 2 * 1024**3
    pdf_cpu_s: float = 120.0
    # OCR (Tesseract) for pages without a text layer, inside the render child: all of one
    # PDF's OCR shares `pdf_ocr_timeout_s` (keep it under pdf_timeout_s); pages past it are
    # still queued, without text, and the upload's message says so.
    pdf_ocr: bool = True
    pdf_ocr_timeout_s: float = 60.0
    pdf_ocr_lang: str = "eng"
    max_query_chars: int = 1_000
    max_top_k: int = 100
    # /status lists at most this many items per state (the spec's fields, nothing added)
    max_status_items: int = 10_000
    max_search_image_bytes: int = 20 * 1024**2
    # Per-user storage quota (stored file bytes and items; 0 = unlimited), enforced per member.
    user_max_bytes: int = 20 * 1024**3
    user_max_items: int = 200_000
    # Uploads are refused (507) when the data dir's disk has less free space than this.
    min_free_bytes: int = 1024**3


class OcrSettings(BaseModel):
    """Words in photos (issue 16): Tesseract on uploaded photos, in the Embedder.

    A photo passes a cheap pre-check first (lumen/ocr.py), so one without text costs what it
    did without OCR. OCR runs on a pool of its own in each replica (`workers` single-threaded
    Tesseract processes, at most `queue` photos waiting), never on the model's threads.
    Tesseract gets `timeout_s` per photo; a photo that waited `max_wait_s` for a thread is
    not read. Either way it is indexed without words and noted: OCR never fails an item.
    Keep `max_wait_s + timeout_s` under `queue.task_timeout_s`. PDFs have their own OCR
    settings (`limits.pdf_ocr*`).
    """

    photos: bool = True
    timeout_s: float = Field(default=10.0, ge=0)
    max_wait_s: float = Field(default=60.0, ge=0)
    lang: str = "eng"
    workers: int = Field(default=1, ge=1)
    queue: int = Field(default=256, ge=0)
    # Photos are read at most this large (longest side, pixels) and keep at most
    # `max_text_bytes` of words (UTF-8), cut at a word.
    max_side: int = Field(default=2000, ge=64)
    max_text_bytes: int = Field(default=2048, ge=0)

    @field_validator("lang")
    @classmethod
    def _tesseract_lang(cls, value: str) -> str:
        from lumen.ocr import valid_lang

        if not valid_lang(value):
            raise ValueError("ocr.lang must be a Tesseract language list like eng or eng+deu")
        return value


class AuthSettings(BaseModel):
    """Tokens, password rules and login throttling."""

    jwt_secret: str | None = None
    jwt_algorithm: str = "HS256"
    token_ttl_s: int = 24 * 3600
    min_password_chars: int = 8
    max_password_chars: int = 1024
    # Failed logins are counted per (username, client address) and per client address, never
    # per username alone, so nobody can lock an account's owner out from elsewhere.
    login_max_failures: int = 5
    login_max_failures_per_address: int = 30
    login_window_s: int = 900
    admin_users: list[str] = Field(default_factory=list)
    # Peers (IPs or CIDRs) whose X-Forwarded-For is believed; empty: the TCP peer is the client.
    trusted_proxies: list[str] = Field(default_factory=list)
    # False: POST /signup answers 403 and operators run `lumen admin create-user`.
    public_signup: bool = True
    signup_per_address: int = 10
    signup_window_s: int = 3600
    image_link_ttl_s: int = 3600
    stream_ticket_ttl_s: int = 60

    @field_validator("trusted_proxies")
    @classmethod
    def _parse_proxies(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry.strip(), strict=False)
            except ValueError as exc:
                raise ValueError(f"auth.trusted_proxies: {entry!r} is not an IP or CIDR") from exc
        return [entry.strip() for entry in value]

    @field_validator("jwt_secret")
    @classmethod
    def _refuse_placeholders(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if value.strip().lower() in _PLACEHOLDER_SECRETS or len(value) < _MIN_SECRET_CHARS:
            raise ValueError(
                f"LUMEN_AUTH__JWT_SECRET must be a random string of at least {_MIN_SECRET_CHARS}"
                " characters (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`)"
            )
        return value


class QueueSettings(BaseModel):
    """Reliable-queue timing and the dispatcher's pacing."""

    task_timeout_s: float = 120.0
    max_retries: int = 3
    # Chunk size until the embedders' heartbeats say their batch size.
    dispatch_batch_size: int = 32
    # Chunks in flight at least (more with more live replicas: two each, plus one).
    max_inflight_batches: int = 4
    # The dispatcher sleeps until woken (enqueue, finished chunk, deadline); this is the
    # longest it sleeps without a wake, as a safety net for a lost one.
    idle_check_s: float = 5.0
    # Dispatcher shards (named actors, users hashed to them): the control plane grows with nodes.
    dispatchers: int = 1
    index_shards: int = 2
    # A ZIP upload queues its images in chunks while it is still extracting: the first chunk
    # holds `enqueue_first_chunk` (one: embedding starts as soon as one image is stored), each
    # next one twice the last, up to `enqueue_chunk`; a chunk is sent sooner once its first
    # image waited `enqueue_flush_s`.
    enqueue_chunk: int = Field(default=32, ge=1)
    enqueue_first_chunk: int = Field(default=1, ge=1)
    enqueue_flush_s: float = 0.5


class IndexSettings(BaseModel):
    """FAISS index shapes."""

    approximate_threshold: int = 50_000
    ivf_nprobe: int = 32
    # What one IndexShard holds (FAISS + BM25, estimated); least recently used users' spaces
    # are evicted past it (never the one being served). 0 = no limit.
    shard_memory_bytes: int = Field(default=4 * 1024**3, ge=0)
    # Snapshots of users' indexes under <data_dir>/snapshots, keyed by the vector version;
    # written once a space has been quiet `snapshot_debounce_s` (or dirty for
    # `snapshot_max_delay_s`), and only for spaces of at least `snapshot_min_vectors`.
    snapshots: bool = True
    snapshot_debounce_s: float = Field(default=10.0, ge=0)
    snapshot_max_delay_s: float = Field(default=120.0, ge=0)
    snapshot_min_vectors: int = Field(default=1_000, ge=0)
    # How IndexShard actors are placed: "SPREAD" (over the nodes that fit `shard_resources`)
    # or "DEFAULT" (Ray's packing). `shard_resources` None: `actor_resources` (e.g. the head).
    shard_placement: Literal["SPREAD", "DEFAULT"] = "SPREAD"
    shard_resources: dict[str, float] | None = None


class ReindexSettings(BaseModel):
    """Re-embedding users' spaces after the model changed (docs/models.md)."""

    # Start re-embedding by itself when the app starts and a user's space holds another
    # model than the deployed one (a no-op, holding nothing, when every space is current).
    auto_start: bool = True
    # Its share of the cluster's CPUs: the Ray Data actor pool holds at most this share
    # (at least one actor of `cpus_per_actor`), so live ingest keeps the rest.
    share: float = Field(default=0.25, gt=0, le=1)
    cpus_per_actor: float = Field(default=1.0, gt=0)
    batch_size: int = Field(default=32, ge=1)
    # While this many items wait in the live queues, the job pauses between batches.
    pause_backlog_items: int = Field(default=1, ge=1)
    # A pause after every batch besides (0: none): a gentler job on a small box.
    batch_pause_s: float = Field(default=0.0, ge=0)
    # Keep the previous space (`old:` keys) after the switch instead of deleting it.
    keep_old_space: bool = False
    # How to load the previous model when Redis has no record of it (e.g. the first deploy
    # of this version): queries of users still on it are encoded with it until the switch.
    previous_model: ModelSettings | None = None


class GeminiSettings(BaseModel):
    """The answerer behind `POST /search/pdf`; page images leave the server when a key is set."""

    api_key: str | None = None
    model: str = "gemini-2.5-flash"
    base_url: str | None = None
    timeout_s: float = 30.0


class MonitorSettings(BaseModel):
    """How workers are watched and events kept."""

    poll_interval_s: float = 2.0
    heartbeat_interval_s: float = 2.0
    stale_after_s: float = 15.0
    dead_ttl_s: float = 600.0
    max_events: int = 1000
    sse_interval_s: float = 1.0
    sse_heartbeat_s: float = 10.0


class ExecutorSize(BaseModel):
    """One bounded thread pool: `workers` threads and at most `queue` calls waiting."""

    workers: int = Field(default=2, ge=1)
    queue: int = Field(default=16, ge=0)


class AdmissionSettings(BaseModel):
    """What one replica admits at once, per user and in total; the excess gets a 429.

    `streams_total` must stay below the Ingress's `max_ongoing_requests` (the Serve YAML):
    an open stream holds a request slot, and plain requests need the rest.
    """

    streams_per_user: int = 8
    streams_total: int = 120
    uploads_per_user: int = 2
    pdf_questions_per_user: int = 2
    # Streams re-check their credential (expiry, account reset) this often.
    stream_recheck_s: float = 15.0
    # Bodies of routes that take no file: auth forms, JSON, search/PDF forms without images.
    max_form_bytes: int = 64 * 1024
    retry_after_s: int = 5
    # Failed /login and /signup answers wait this long (at most `tarpit_max_held` at once),
    # so a closed loop of wrong passwords cannot make the server refuse as fast as it can.
    refusal_delay_s: float = 1.0
    tarpit_max_held: int = 64


class ExecutorSettings(BaseModel):
    """Blocking work per kind on its own pool, so a flood of one kind never starves another."""

    # one core at most on password hashing, whatever a login flood does (raise on big nodes)
    password: ExecutorSize = Field(default_factory=lambda: ExecutorSize(workers=1, queue=16))
    pdf: ExecutorSize = Field(default_factory=lambda: ExecutorSize(workers=2, queue=8))
    gemini: ExecutorSize = Field(default_factory=lambda: ExecutorSize(workers=8, queue=32))
    blocking: ExecutorSize = Field(default_factory=lambda: ExecutorSize(workers=16, queue=256))
    # The Retry-After a caller gets when a pool is full.
    busy_retry_after_s: int = 1


class Settings(BaseSettings):
    """Everything a deployment, actor or command needs to know, in one place."""

    model_config = SettingsConfigDict(
        env_prefix="LUMEN_", env_nested_delimiter="__", extra="ignore"
    )

    data_dir: Path = Path("./data")
    app_name: str = "lumen"
    # Ray resources the bookkeeping actors ask for, e.g. {"head": 0.001} to keep the
    # dispatcher, shards and monitor on a cluster's head node (never on a GPU worker).
    actor_resources: dict[str, float] = Field(default_factory=dict)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    ocr: OcrSettings = Field(default_factory=OcrSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    queue: QueueSettings = Field(default_factory=QueueSettings)
    index: IndexSettings = Field(default_factory=IndexSettings)
    gemini: GeminiSettings = Field(default_factory=GeminiSettings)
    reindex: ReindexSettings = Field(default_factory=ReindexSettings)
    monitor: MonitorSettings = Field(default_factory=MonitorSettings)
    admission: AdmissionSettings = Field(default_factory=AdmissionSettings)
    executors: ExecutorSettings = Field(default_factory=ExecutorSettings)

    def with_local_secret(self) -> Settings:
        """Return settings whose JWT secret is set, generating one kept in the data dir."""
        if self.auth.jwt_secret:
            return self
        secret = load_or_create_secret(self.data_dir / "jwt_secret")
        auth = self.auth.model_copy(update={"jwt_secret": secret})
        return self.model_copy(update={"auth": auth})


def load_or_create_secret(path: Path) -> str:
    """Read the secret at `path`, creating it (mode 0600) on first use."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    secret = secrets.token_urlsafe(48)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process won the race
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(secret)
    return secret
