"""Ingest throughput: a ZIP of 12 MP photos through HTTP until all are done, against bare refs.

Three numbers on the same images, model (ViT-B-32, random init) and batch size:

    e2e      POST /upload of the ZIP, timed until every item is done (Redis `done` zset)
    bare     lumen.worker's decode (JPEG draft mode + preprocess) then the forward pass,
             serially in this one plain process, torch threads = the replica's
    forward  the forward pass alone on tensors decoded beforehand

and the ratios e2e/bare (target >= 0.85) and bare/forward (the share decode leaves to the
model). Each service run pins the Embedder to one replica with `--embedder-cpus` CPUs, so
Ray gives it OMP_NUM_THREADS = that many torch threads; the bare refs use the same count.
While the service works, the CPU seconds of every process involved are sampled (psutil),
and with `--profile` the Embedder replica is sampled with py-spy, to show where time goes.

Upload overlap: e2e against processing the same stored files alone (target >= 0.95), with
when the upload's first item reached the queue. Nothing can be queued before the whole body
is in (the refusals of an archive as a whole read its central directory, at the end), so
processing / (processing + first queued) is the most the ratio can be on this box.

    python bench/ingest.py --images 200 --embedder-cpus 1 2 --profile
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import ray
from common import (
    CACHE,
    VIT_B_32,
    Service,
    one_embedder,
    pct,
    print_machine,
    running_service,
    stored_zip,
    table,
    threads_of,
    verdict,
)
from PIL import Image

E2E_TARGET = 0.85
# Embedding starts during the upload: e2e loses at most 5% to the upload phase.
OVERLAP_TARGET = 0.95
PHOTO_SIZE = (4000, 3000)
PNG_SIZE = (2000, 1500)  # PNGs are screenshots and exports more than camera photos
HEIC_SIZE = (4032, 3024)  # an iPhone photo
PHOTOS = CACHE / "photos"


# --------------------------------------------------------------------------- the corpus


def kind_of(i: int) -> str:
    """1 in 20 is a PNG, 1 in 20 a HEIC, the rest JPEG."""
    return "png" if i % 20 == 7 else "heic" if i % 20 == 17 else "jpg"


_NOISE: dict[str, np.ndarray] = {}
_NOISE_PAD = 96


def _noise_bank() -> np.ndarray:
    """Per-process sensor noise, made once (random offsets into it keep images distinct)."""
    if "bank" not in _NOISE:
        rng = np.random.default_rng(12345)
        w, h = max(PHOTO_SIZE[0], HEIC_SIZE[0]), max(PHOTO_SIZE[1], HEIC_SIZE[1])
        luma = rng.standard_normal((h + _NOISE_PAD, w + _NOISE_PAD, 1), dtype=np.float32) * 7
        chroma = rng.standard_normal((h + _NOISE_PAD, w + _NOISE_PAD, 3), dtype=np.float32) * 3
        _NOISE["bank"] = luma + chroma
    return _NOISE["bank"]


def photo_pixels(seed: int, size: tuple[int, int]) -> np.ndarray:
    """A photo-like RGB array: smooth colour fields, mid-scale texture, sensor noise."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(
        (w, h), Image.BICUBIC
    )
    texture = Image.fromarray(rng.integers(0, 256, (h // 24, w // 24, 3), dtype=np.uint8)).resize(
        (w, h), Image.BILINEAR
    )
    out = np.asarray(base, dtype=np.float32) * 0.7
    out += np.asarray(texture, dtype=np.float32) * 0.3
    dy, dx = rng.integers(0, _NOISE_PAD, 2)
    out += _noise_bank()[dy : dy + h, dx : dx + w]
    return np.clip(out, 0, 255, out=out).astype(np.uint8)


def make_photo(i: int) -> Path:
    kind = kind_of(i)
    path = PHOTOS / f"photo_{i:05d}.{kind}"
    if path.exists():
        return path
    size = {"jpg": PHOTO_SIZE, "png": PNG_SIZE, "heic": HEIC_SIZE}[kind]
    img = Image.fromarray(photo_pixels(i, size))
    tmp = path.with_name(path.name + ".tmp")
    if kind == "jpg":
        img.save(tmp, "JPEG", quality=92)
    elif kind == "png":
        img.save(tmp, "PNG", compress_level=6)
    else:
        import pillow_heif

        pillow_heif.from_pillow(img).save(tmp, format="HEIF", quality=80)
    tmp.replace(path)
    return path


def photo_set(n: int) -> list[Path]:
    """The first `n` photos, generated once into .cache/bench/photos and reused."""
    PHOTOS.mkdir(parents=True, exist_ok=True)
    missing = [i for i in range(n) if not (PHOTOS / f"photo_{i:05d}.{kind_of(i)}").exists()]
    if missing:
        print(f"# generating {len(missing)} photos into {PHOTOS} (once) ...", flush=True)
        t0 = time.perf_counter()
        with ProcessPoolExecutor(2) as pool:
            list(pool.map(make_photo, missing, chunksize=4))
        print(f"# generated in {time.perf_counter() - t0:.0f} s", flush=True)
    return [PHOTOS / f"photo_{i:05d}.{kind_of(i)}" for i in range(n)]


def photo_zip(paths: list[Path]) -> Path:
    """A stored (uncompressed, as photos are) ZIP of `paths`, cached."""
    return stored_zip(CACHE / f"photos-{len(paths)}.zip", paths, "trip")


# --------------------------------------------------------------------------- bare refs


def bare_refs(paths: list[Path], threads: int, batch: int) -> dict[str, float]:
    """bare pipeline (decode + forward, serial) and pure forward, with `threads` torch threads."""
    import torch

    from lumen.config import Settings
    from lumen.worker import EmbedderCore

    torch.set_num_threads(threads)
    core = EmbedderCore(Settings(model=VIT_B_32), "bare", threads=threads)
    warm = [core.decode_bytes(paths[0].read_bytes())] * min(batch, 8)
    core.embed_tensors(warm)

    tensors = []
    decode_s = forward_s = 0.0
    by_format: dict[str, list[float]] = defaultdict(list)
    t0 = time.perf_counter()
    for start in range(0, len(paths), batch):
        chunk = []
        for p in paths[start : start + batch]:
            d0 = time.perf_counter()
            chunk.append(core.decode_bytes(p.read_bytes()))
            took = time.perf_counter() - d0
            decode_s += took
            by_format[p.suffix[1:]].append(took)
        f0 = time.perf_counter()
        core.embed_tensors(chunk)
        forward_s += time.perf_counter() - f0
        tensors.extend(chunk)
    bare_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    for start in range(0, len(tensors), batch):
        core.embed_tensors(tensors[start : start + batch])
    pure_s = time.perf_counter() - t0
    return {
        "threads": threads,
        "bare_s": bare_s,
        "decode_s": decode_s,
        "forward_in_bare_s": forward_s,
        "forward_s": pure_s,
        "decode_ms": {k: 1e3 * float(np.mean(v)) for k, v in by_format.items()},
        "draft": core._draft[0],  # bench only: the draft size the worker asks for
    }


def decode_whatifs(paths: list[Path], per_format: int = 4) -> list[list[object]]:
    """ms/image of lumen's decode+preprocess at the worker's draft size, at the model size, none."""
    from lumen.embedding import ClipModel
    from lumen.ingest.images import open_image

    model = ClipModel.from_settings(VIT_B_32)
    side = model.image_size
    picked: dict[str, list[Path]] = defaultdict(list)
    for p in paths:
        if len(picked[p.suffix]) < per_format:
            picked[p.suffix].append(p)
    rows = []
    for suffix, files in sorted(picked.items()):
        blobs = [f.read_bytes() for f in files]
        cells: list[object] = [
            suffix[1:],
            f"{Image.open(files[0]).size}",
            f"{np.mean([len(b) for b in blobs]) / 1e6:.1f}",
        ]
        for draft in (2 * side, side, None):
            times = []
            for blob in blobs:
                t0 = time.perf_counter()
                size = (draft, draft) if draft else None
                img = open_image(blob, max_pixels=10**9, draft_size=size)
                decoded = img.size
                model.preprocess_image(img)
                times.append(time.perf_counter() - t0)
            cells.append(f"{1e3 * np.median(times):.0f} ({decoded[0]}x{decoded[1]})")
        rows.append(cells)
    return rows


# --------------------------------------------------------------------------- the service


class CpuSampler:
    """CPU seconds used by each process of interest between `start()` and `stop()`."""

    def __init__(self, pids: dict[str, int]) -> None:
        import psutil

        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.begin: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        out = {}
        for name, proc in self.procs.items():
            try:
                t = proc.cpu_times()
                out[name] = t.user + t.system
            except Exception:  # noqa: BLE001 - a process went away
                out[name] = float("nan")
        return out

    def start(self) -> None:
        self.begin = self._now()

    def stop(self) -> dict[str, float]:
        end = self._now()
        return {k: end[k] - self.begin[k] for k in end}


def process_pids(redis_pid: int | None) -> dict[str, int]:
    import os

    from common import actor_pids

    pids: dict[str, int] = {}
    wanted = {
        "Ingress",
        "Embedder",
        "Dispatcher",
        "IndexShard",
        "ProxyActor",
        "ServeController",
        "Monitor",
    }
    for name, pid in actor_pids():
        short = name.split(":")[-1]
        if short in wanted:
            pids[short if short not in pids else f"{short}#{pid}"] = pid
    if redis_pid:
        pids["redis-server"] = redis_pid
    pids["bench (driver)"] = os.getpid()
    return pids


def profile_embedder(pid: int, seconds: int, out: Path) -> subprocess.Popen[bytes]:
    cmd = [
        str(Path(sys.executable).with_name("py-spy")),
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(seconds),
        "--rate",
        "50",
        "--format",
        "raw",
        "--nonblocking",
        "--threads",
        "--output",
        str(out),
    ]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


_BUCKETS = (
    ("forward (encode_image_tensors)", ("encode_image_tensors",)),
    ("captions", ("caption (lumen/captions.py",)),
    ("decode (open_image)", ("open_image",)),
    ("preprocess (resize/crop/normalise)", ("preprocess_image",)),
    ("redis (assign/heartbeat)", ("_assign", "_beat")),
    ("serve batching / asyncio / rpc", ("",)),
)


def summarise_profile(path: Path, rate: int = 50) -> list[list[object]]:
    """Core-seconds per bucket from py-spy's raw (collapsed) stacks."""
    counts: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        for bucket, needles in _BUCKETS:
            if any(needle in stack for needle in needles):
                counts[bucket] += int(n)
                break
    total = sum(counts.values()) or 1
    return [[b, f"{counts[b] / rate:.1f}", f"{100 * counts[b] / total:.0f}%"] for b, _ in _BUCKETS]


def top_functions(path: Path, rate: int = 50, top: int = 8) -> list[list[object]]:
    """The functions (inclusive, project and Ray frames) most often on py-spy's stacks."""
    counts: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        seen = set()
        for frame in stack.split(";"):
            name = frame.split(" (")[0].strip()
            where = frame.split(" (")[-1]
            if (
                "actors/" in where or "lumen/" in where or "ray/serve" in where or "redis/" in where
            ) and name not in seen:
                seen.add(name)
                counts[f"{name} ({where.split('/')[-1].rstrip(')')})"] += int(n)
    return [[f, f"{c / rate:.1f}"] for f, c in counts.most_common(top)]


def run_service(
    paths: list[Path], zip_path: Path, cpus: int, batch: int, profile_s: int
) -> dict[str, object]:
    """Upload the ZIP to a fresh app whose one Embedder replica has `cpus` CPUs."""

    tweak = one_embedder(
        cpus,
        user_config={"max_batch_size": batch, "batch_wait_timeout_s": 0.02},
        max_ongoing_requests=max(64, 2 * batch),
    )
    with running_service({"model": VIT_B_32.model_dump()}, tweak) as svc:
        user, headers = svc.new_user("ingest")
        redis_pid = int(svc.redis.info("server")["process_id"])
        pids = process_pids(redis_pid)
        emb_pid = pids["Embedder"]
        omp = threads_of("Embedder")
        # Warm the replica (first batch pays lazy init) with one search by image.
        with svc.client() as c:
            c.post("/search", headers=headers, files={"image": ("q.jpg", _small_jpeg())})
        sampler = CpuSampler(pids)
        sampler.start()
        t0 = time.time()
        up_box: dict[str, object] = {}

        def upload() -> None:
            up_box["resp"] = svc.upload_zip(headers, zip_path)
            up_box["t"] = time.time()

        uploader = threading.Thread(target=upload)
        uploader.start()
        first_queued = _first_queued(svc, user, uploader)
        uploader.join()
        t_up = float(up_box["t"])  # type: ignore[arg-type]
        upload_cpu = sampler.stop()
        sampler.start()
        prof_out = CACHE / f"ingest-profile-{cpus}cpu.txt"
        prof = None
        disp_out = CACHE / f"ingest-profile-dispatcher-{cpus}cpu.txt"
        disp = None
        if profile_s:
            prof = profile_embedder(emb_pid, profile_s, prof_out)
            disp = profile_embedder(pids["Dispatcher"], profile_s, disp_out)
        t_end = svc.wait_settled(user, len(paths))
        process_cpu = sampler.stop()
        for p in (prof, disp):
            if p is not None:
                p.wait(timeout=600)
        done = svc.done_times(user)
        times = sorted(done.values())
        resp = up_box["resp"]
        processing_s = processing_only(svc, user)
        result: dict[str, object] = {
            "cpus": cpus,
            "omp": omp,
            "queued": len(resp["queued"]),  # type: ignore[index]
            "done": len(done),
            "upload_s": t_up - t0,
            "process_s": t_end - t_up,
            "e2e_s": t_end - t0,
            "processing_only_s": processing_s,
            "first_done_s": times[0] - t_up if times else float("nan"),
            "first_queued_s": first_queued - t0,
            "steady_img_s": _steady_rate(times),
            "upload_cpu": upload_cpu,
            "process_cpu": process_cpu,
            "zip_mb": zip_path.stat().st_size / 1e6,
        }
        if prof is not None and prof_out.exists():
            result["profile"] = summarise_profile(prof_out)
        if disp is not None and disp_out.exists():
            result["dispatcher_profile"] = top_functions(disp_out)
        return result


def _first_queued(svc: Service, user: str, uploader: threading.Thread) -> float:
    """When the upload's first item reached the queue (polled every 10 ms while it runs)."""
    while uploader.is_alive():
        if svc.redis.hlen(svc.keys.meta(user)):
            return time.time()
        time.sleep(0.01)
    return time.time()


def processing_only(svc: Service, user: str) -> float:
    """Seconds to embed the same stored files again with no upload: processing alone.

    A second user gets hard links to `user`'s stored files and the same items queued
    straight into Redis (what the ingress does once a ZIP is stored), then one wake per
    dispatcher shard; the clock runs from the wake to the last commit.
    """
    from actors.dispatcher import get_dispatcher
    from lumen.storage import Stores
    from lumen.storage.queue import NewItem

    other = f"{user}p"
    src, dst = svc.data_dir / "uploads" / user, svc.data_dir / "uploads" / other
    rows = []
    for item, raw in svc.redis.hgetall(svc.keys.meta(user)).items():
        name = item.decode()
        meta = json.loads(raw)
        target = dst / Path(name).relative_to(f"uploads/{user}")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(src / Path(name).relative_to(f"uploads/{user}"), target)
        rows.append(NewItem(f"uploads/{other}/{target.relative_to(dst)}", meta["sha256"], meta))
    Stores(svc.settings, svc.redis).queue.enqueue(other, rows)
    t0 = time.time()
    shards = svc.settings.queue.dispatchers
    ray.get([get_dispatcher(svc.settings, s).wake.remote() for s in range(shards)])
    return svc.wait_settled(other, len(rows)) - t0


def _steady_rate(times: list[float]) -> float:
    """Items/s between the 10th and 90th percentile commits (skips ramp-up and tail)."""
    if len(times) < 10:
        return float("nan")
    lo, hi = pct(times, 10), pct(times, 90)
    n = sum(1 for t in times if lo <= t <= hi)
    return (n - 1) / (hi - lo) if hi > lo else float("nan")


def _small_jpeg() -> bytes:
    out = io.BytesIO()
    Image.fromarray(photo_pixels(99, (640, 480))).save(out, "JPEG", quality=90)
    return out.getvalue()


# --------------------------------------------------------------------------- report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--batch", type=int, default=32, help="max_batch_size (configs/local.yaml)")
    parser.add_argument(
        "--embedder-cpus",
        type=int,
        nargs="+",
        default=[1, 2],
        help="Embedder num_cpus per service run (= its torch threads)",
    )
    parser.add_argument("--profile", action="store_true", help="py-spy the Embedder replica")
    args = parser.parse_args()
    print_machine()
    paths = photo_set(args.images)
    zip_path = photo_zip(paths)
    kinds = Counter(p.suffix[1:] for p in paths)
    print(
        f"# {len(paths)} images {dict(kinds)}, ZIP {zip_path.stat().st_size / 1e6:.0f} MB",
        flush=True,
    )

    rows, cpu_rows, prof_rows, disp_rows, overlap_rows = [], [], [], [], []
    refs_by_threads: dict[int, dict[str, object]] = {}
    for cpus in args.embedder_cpus:
        before = bare_refs(paths, cpus, args.batch)
        # py-spy for ~0.8x the bare time: the steady state, not the tail
        profile_s = max(3, int(0.8 * before["bare_s"])) if args.profile else 0
        svc = run_service(paths, zip_path, cpus, args.batch, profile_s)
        after = bare_refs(paths, cpus, args.batch)  # bracket the service run: the box is shared
        n = len(paths)
        bare_s = (before["bare_s"] + after["bare_s"]) / 2
        fwd_s = (before["forward_s"] + after["forward_s"]) / 2
        e2e, bare, fwd = n / svc["e2e_s"], n / bare_s, n / fwd_s
        processing_s = float(svc["processing_only_s"])  # type: ignore[arg-type]
        processing = n / processing_s
        overlap_rows.append(
            [
                f"{cpus}",
                n,
                f"{svc['upload_s']:.1f}",
                f"{svc['first_queued_s']:.1f}",
                f"{e2e:.2f}",
                f"{processing:.2f}",
                f"{e2e / processing:.2f}",
                verdict(e2e / processing >= OVERLAP_TARGET),
                f"{processing_s / (processing_s + svc['first_queued_s']):.2f}",
            ]
        )
        refs_by_threads[cpus] = before
        rows.append(
            [
                f"{cpus} ({svc['omp']})",
                n,
                f"{svc['upload_s']:.1f}",
                f"{svc['process_s']:.1f}",
                f"{e2e:.2f}",
                f"{n / svc['process_s']:.2f}",
                f"{svc['steady_img_s']:.2f}",
                f"{bare:.2f} ({n / before['bare_s']:.2f}/{n / after['bare_s']:.2f})",
                f"{fwd:.2f}",
                f"{e2e / bare:.2f}",
                f"{bare / fwd:.2f}",
                verdict(e2e / bare >= E2E_TARGET),
            ]
        )
        for name in svc["process_cpu"]:  # type: ignore[union-attr]
            up = svc["upload_cpu"][name]  # type: ignore[index]
            pr = svc["process_cpu"][name]  # type: ignore[index]
            if up > 0.05 or pr > 0.05:
                cpu_rows.append([cpus, name, f"{up:.1f}", f"{pr:.1f}"])
        cpu_rows.append(
            [
                cpus,
                "(wall: upload / processing)",
                f"{svc['upload_s']:.1f}",
                f"{svc['process_s']:.1f}",
            ]
        )
        for r in svc.get("profile", []):  # type: ignore[attr-defined]
            prof_rows.append([cpus, *r])
        for r in svc.get("dispatcher_profile", []):  # type: ignore[attr-defined]
            disp_rows.append([cpus, *r])
        print(f"# embedder_cpus={cpus}: {svc}", flush=True)

    table(
        "Ingest: e2e (HTTP upload until all done) vs bare pipeline vs pure forward, images/s",
        [
            "embedder cpus = torch threads",
            "images",
            "upload_s",
            "process_s",
            "e2e img/s",
            "process-only img/s",
            "steady img/s",
            "bare img/s (before/after)",
            "forward img/s",
            "e2e/bare",
            "bare/forward",
            f"e2e/bare >= {E2E_TARGET}",
        ],
        rows,
    )
    table(
        "Upload overlap: e2e (upload + embed) vs processing alone (same files queued), img/s",
        [
            "embedder cpus",
            "images",
            "upload_s",
            "first queued s",
            "e2e img/s",
            "processing-only img/s",
            "e2e / processing",
            f">= {OVERLAP_TARGET}",
            "ceiling (nothing queued before first queued s)",
        ],
        overlap_rows,
    )
    ref = next(iter(refs_by_threads.values()))
    table(
        f"Bare pipeline split ({ref['threads']} thread(s)): decode+preprocess vs forward",
        ["decode_s", "forward_s", "decode share", "decode ms/img by format"],
        [
            [
                f"{ref['decode_s']:.1f}",
                f"{ref['forward_in_bare_s']:.1f}",
                f"{ref['decode_s'] / ref['bare_s']:.0%}",
                ", ".join(f"{k} {v:.0f}" for k, v in ref["decode_ms"].items()),
            ]
        ],  # type: ignore[union-attr]
    )
    table(
        "Decode + preprocess ms/image (decoded size) by draft size: worker's, model's, none",
        ["format", "stored size", "MB", "draft 2x model (worker)", "draft = model", "no draft"],
        decode_whatifs(paths),
    )
    table(
        "CPU seconds per process (upload phase / processing phase)",
        ["embedder cpus", "process", "upload cpu_s", "processing cpu_s"],
        cpu_rows,
    )
    if prof_rows:
        table(
            "py-spy of the Embedder replica during processing (core-seconds, all threads)",
            ["embedder cpus", "where", "core_s", "share"],
            prof_rows,
        )
    if disp_rows:
        table(
            "py-spy of the Dispatcher during processing (core-seconds on stack, inclusive)",
            ["embedder cpus", "function", "core_s"],
            disp_rows,
        )


if __name__ == "__main__":
    main()
