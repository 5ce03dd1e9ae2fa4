"""Shared bench plumbing: a private Redis + Ray + Serve app, HTTP users, tables, the machine.

Every bench measures the service and its limit (the same work done bare, in one process) in
the same run, because the box is shared and only ratios are comparable across runs. Nothing
here asserts a timing: benches print tables and exit 0.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/x.py` puts bench/ first, not the project root
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import redis  # noqa: E402

from lumen.config import ModelSettings, Settings  # noqa: E402
from lumen.keys import Keys  # noqa: E402

CACHE = ROOT / ".cache" / "bench"
PASSWORD = "correct horse battery"
VIT_B_32 = ModelSettings(name="ViT-B-32", pretrained=None)  # random init: timing only


# --------------------------------------------------------------------------- the machine


def machine() -> dict[str, str]:
    """nproc, CPU model, RAM and library versions, for the header of every table."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    import faiss
    import ray
    import torch

    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "ram": f"{ram_gib:.1f} GiB",
        "python": platform.python_version(),
        "versions": f"torch {torch.__version__}, faiss {faiss.__version__}, ray {ray.__version__}",
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def print_machine() -> None:
    m = machine()
    print(
        f"# machine: {m['nproc']} cpus, {m['cpu']}, {m['ram']} RAM, python {m['python']};"
        f" {m['versions']}; loadavg {m['load']}",
        flush=True,
    )


# --------------------------------------------------------------------------- tables


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print a Markdown table (pasteable into docs/benchmarks.md)."""
    cells = [[_cell(c) for c in row] for row in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(header)
    ]
    print(f"\n### {title}\n")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    print(flush=True)


def _cell(value: object) -> str:
    if isinstance(value, float):
        if value == 0:
            return "0"
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def pct(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of `values`, by linear interpolation."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


# --------------------------------------------------------------------------- the service


@dataclass
class Service:
    """A running app of our own: base URL, settings, Redis and the Serve config deployed."""

    url: str
    settings: Settings
    redis: redis.Redis
    config: dict[str, Any]
    data_dir: Path
    keys: Keys = field(init=False)

    def __post_init__(self) -> None:
        self.keys = Keys(self.settings.redis.namespace)

    def client(self, timeout_s: float = 600.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout_s)

    def new_user(self, prefix: str = "b", address: str | None = None) -> tuple[str, dict[str, str]]:
        """Sign up and log in a fresh user; returns (name, auth headers).

        Each user comes from its own client address (`X-Forwarded-For`, believed because
        `running_service` trusts 127.0.0.1 as a proxy), so the per-address signup limit never
        throttles a bench's own setup.
        """
        name = f"{prefix}{uuid.uuid4().hex[:8]}"
        origin = {"X-Forwarded-For": address or bench_address()}
        with self.client() as c:
            r = c.post("/signup", json={"username": name, "password": PASSWORD}, headers=origin)
            r.raise_for_status()
            r = c.post("/login", data={"username": name, "password": PASSWORD}, headers=origin)
            r.raise_for_status()
            return name, {"Authorization": f"Bearer {r.json()['access_token']}"}

    def upload_zip(self, headers: dict[str, str], zip_path: Path) -> dict[str, Any]:
        """POST /upload, streaming the ZIP from disk (as the CLI does)."""
        from lumen.client import multipart_body

        extra, body = multipart_body("zip_file", zip_path)
        with self.client() as c:
            r = c.post("/upload", headers={**headers, **extra}, content=body)
        if r.status_code != 200:
            raise RuntimeError(f"upload failed: HTTP {r.status_code} {r.text[:300]}")
        return dict(r.json())

    def settled(self, user: str) -> tuple[int, int]:
        """(done, errors) of `user`, straight from Redis (cheaper than polling HTTP)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcard(self.keys.done(user))
        pipe.hlen(self.keys.errors(user))
        done, errors = pipe.execute()
        return int(done), int(errors)

    def wait_settled(
        self, user: str, n: int, timeout_s: float = 1800.0, poll_s: float = 0.05
    ) -> float:
        """Block until `n` of the user's items are done or failed; returns the time."""
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            done, errors = self.settled(user)
            if done + errors >= n:
                if errors:
                    sample = list(self.redis.hgetall(self.keys.errors(user)).items())[:3]
                    print(f"  !! {errors} items failed, e.g. {sample}", flush=True)
                return time.time()
            time.sleep(poll_s)
        raise TimeoutError(f"{user}: {self.settled(user)} of {n} settled in {timeout_s} s")

    def done_times(self, user: str) -> dict[str, float]:
        """item -> commit time (epoch s) of everything done for `user`."""
        raw = self.redis.zrange(self.keys.done(user), 0, -1, withscores=True)
        return {k.decode(): float(v) for k, v in raw}

    def shard(self, user: str) -> Any:
        """The IndexShard actor holding `user`'s index (created as the service would)."""
        from actors.index_shard import get_index_shard
        from actors.naming import shard_for

        return get_index_shard(self.settings, shard_for(user, self.settings.queue.index_shards))


_addresses = itertools.count(1)


def bench_address(block: int = 18) -> str:
    """A fresh client address in 198.`block`.0.0/16 (198.18.0.0/15 is for benchmarks)."""
    n = next(_addresses)
    return f"198.{block}.{(n >> 8) & 255}.{n & 255}"


def actor_pids() -> list[tuple[str, int]]:
    """(class name, pid) of the live actors of the Ray this process is connected to."""
    import ray
    from ray.util.state import list_actors

    # An explicit address: other Ray instances on the box make the default lookup ambiguous.
    address = ray.get_runtime_context().gcs_address
    actors = list_actors(
        address=address,
        filters=[("state", "=", "ALIVE")],
        limit=1000,
        raise_on_missing_output=False,
    )
    return [(a.class_name or "?", int(a.pid)) for a in actors if a.pid]


def _threads_inside(self: object) -> str:
    import os as _os

    import faiss as _faiss
    import torch as _torch

    return (
        f"OMP_NUM_THREADS={_os.environ.get('OMP_NUM_THREADS')}, torch"
        f" {_torch.get_num_threads()}, faiss {_faiss.omp_get_max_threads()}"
    )


def threads_of(class_name: str) -> str:
    """Thread settings inside the first live actor whose class name contains `class_name`."""
    import ray
    from ray.util.state import list_actors

    address = ray.get_runtime_context().gcs_address
    for a in list_actors(
        address=address,
        filters=[("state", "=", "ALIVE")],
        limit=1000,
        raise_on_missing_output=False,
    ):
        if class_name in (a.class_name or "") and a.name:
            actor = ray.get_actor(a.name, namespace=a.ray_namespace)
            return str(ray.get(actor.__ray_call__.remote(_threads_inside), timeout=60))
    return "?"


def set_deployment(config: dict[str, Any], name: str, **fields: Any) -> None:
    """Override fields of one deployment in a loaded Serve config (nested dicts merge)."""
    for app in config["applications"]:
        for dep in app.get("deployments", []):
            if dep["name"] == name:
                for key, value in fields.items():
                    if isinstance(value, dict) and isinstance(dep.get(key), dict):
                        dep[key] = {**dep[key], **value}
                    else:
                        dep[key] = value
                return
    raise KeyError(f"no deployment {name!r} in the config")


@contextlib.contextmanager
def running_service(
    settings_overrides: dict[str, Any] | None = None,
    tweak: Callable[[dict[str, Any]], None] | None = None,
    ray_cpus: int = 4,
    aof: bool = True,
) -> Iterator[Service]:
    """A private redis-server, a local Ray and the Serve app of `configs/local.yaml`.

    `settings_overrides` merge into the app's settings; `tweak(config)` edits the loaded
    Serve config (replicas, num_cpus) before deploying. Everything started is stopped after.
    Ray gets `ray_cpus` logical CPUs (as the tests do): logical, so a replica's `num_cpus`
    decides its thread count, not how many cores it may use.
    """
    import ray
    from ray import serve

    from deploy import deploy, free_port, load_config, start_ray

    with temp_redis("lumen-bench-", aof) as (client, url, tmp):
        namespace = f"bench{uuid.uuid4().hex[:6]}"
        extra = dict(settings_overrides or {})
        # Bench clients are told apart by X-Forwarded-For (see Service.new_user); the service's
        # own limits stay at their defaults.
        auth = {"trusted_proxies": ["127.0.0.1"], **extra.pop("auth", {})}
        overrides: dict[str, Any] = {
            "data_dir": str(tmp / "data"),
            "redis": {"url": url, "namespace": namespace},
            "auth": auth,
            **extra,
        }
        config = load_config(ROOT / "configs" / "local.yaml", overrides)
        port = free_port()
        config["http_options"]["port"] = port
        if tweak is not None:
            tweak(config)
        start_ray(num_cpus=ray_cpus)
        # From here on, Ray lookups (the state API) mean this Ray, not whichever is newest.
        os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
        try:
            t0 = time.perf_counter()
            deploy(config, timeout_s=600)
            settings = Settings(**overrides)
            svc = Service(f"http://127.0.0.1:{port}", settings, client, config, tmp / "data")
            _wait_healthy(svc.url)
            print(f"# service up in {time.perf_counter() - t0:.1f} s at {svc.url}", flush=True)
            yield svc
        finally:
            with contextlib.suppress(Exception):
                serve.shutdown()
            ray.shutdown()


@contextlib.contextmanager
def temp_redis(prefix: str, aof: bool = True) -> Iterator[tuple[redis.Redis, str, Path]]:
    """A redis-server of our own in a fresh temporary folder (removed after): (client, url,
    folder). Also readies this process to start a local Ray of its own: the cwd is the project
    root (Ray workers import serve_app, deployments, actors and lumen from it) and RAY_ADDRESS
    is `local`, even when another Ray on the box was started with `ray start`.

    `aof=False` turns persistence off: bulk loads of GBs of vectors do not measure it.
    """
    from deploy import start_redis

    os.chdir(ROOT)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ["RAY_ADDRESS"] = "local"
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    proc, url = start_redis(tmp)
    try:
        client = redis.Redis.from_url(url)
        if not aof:
            client.config_set("appendonly", "no")
        yield client, url, tmp
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)


def one_embedder(
    cpus: int, num_gpus: float | None = None, **fields: Any
) -> Callable[[dict[str, Any]], None]:
    """A `running_service` tweak: exactly one Embedder replica with `cpus` CPUs (and
    `num_gpus` GPUs when given); `fields` override more of the deployment."""
    options: dict[str, Any] = {"num_cpus": cpus}
    if num_gpus is not None:
        options["num_gpus"] = num_gpus

    def tweak(config: dict[str, Any]) -> None:
        set_deployment(
            config,
            "Embedder",
            ray_actor_options=options,
            autoscaling_config={"min_replicas": 1, "max_replicas": 1},
            **fields,
        )

    return tweak


def _wait_healthy(url: str, timeout_s: float = 300.0) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return
        time.sleep(0.5)
    raise RuntimeError("service did not become healthy")


# --------------------------------------------------------------------------- vectors


def bulk_load(
    store: Any, user: str, model_id: str, vectors: np.ndarray, chunk: int = 20_000
) -> float:
    """Write `vectors` into `user`'s space of `model_id` in `store` (a `Stores(...).vectors`)
    with `write_raw` (ids 1..n, items `vec/<i>`); returns seconds."""
    from lumen.vectors import encode_vectors

    dim = vectors.shape[1]
    t0 = time.perf_counter()
    for start in range(0, len(vectors), chunk):
        blobs = encode_vectors(np.asarray(vectors[start : start + chunk]))
        rows = [(f"vec/{start + i}", b) for i, b in enumerate(blobs)]
        store.write_raw(user, model_id, dim, rows)
    return time.perf_counter() - t0


def clustered(n: int, dim: int = 512, centres: int = 1_000, seed: int = 0) -> np.ndarray:
    """CLIP-like clustered unit vectors (bench/search_index.py's mixture), cached on disk."""
    from search_index import clustered_vectors

    path = CACHE / "vectors" / f"mix-{n}-{dim}-{centres}-{seed}.npy"
    if path.exists():
        return np.load(path, mmap_mode="r")
    path.parent.mkdir(parents=True, exist_ok=True)
    data = clustered_vectors(n, dim, centres, seed)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, data)
    tmp.replace(path)
    return data


def random_jpeg_zip(folder: str, name: str, count: int, seed: int, pixels: int, side: int) -> Path:
    """A cached ZIP of `count` distinct JPEGs: `pixels`² random pixels scaled to `side`²."""
    import io
    import zipfile

    import numpy as np
    from PIL import Image

    path = CACHE / folder / f"{name}-{count}-{seed}.zip"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        for i in range(count):
            img = Image.fromarray(rng.integers(0, 256, (pixels, pixels, 3), dtype=np.uint8))
            if side != pixels:
                img = img.resize((side, side), Image.BILINEAR)
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=90)
            zf.writestr(f"img_{i:05d}.jpg", buf.getvalue())
    tmp.replace(path)
    return path


def stored_zip(path: Path, files: list[Path], folder: str) -> Path:
    """A cached ZIP at `path` holding `files` uncompressed (as photos are) under `folder/`."""
    import zipfile

    if not path.exists():
        tmp = path.with_suffix(".tmp")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
            for p in files:
                zf.write(p, f"{folder}/{p.name}")
        tmp.replace(path)
    return path


def private_redis(args: list[str], folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A redis-server of our own on a free port (no RDB), `args` added; (process, port)."""
    from deploy import free_port

    port = free_port()
    binary = shutil.which("redis-server")
    assert binary, "redis-server is required (scripts/ensure-redis.sh installs it)"
    cmd = [binary, "--port", str(port), "--dir", str(folder), "--save", "", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    client = redis.Redis(port=port)
    for _ in range(200):
        try:
            client.ping()
            return proc, port
        except redis.RedisError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")
