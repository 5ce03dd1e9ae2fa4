"""GPU ingest: e2e through the service vs the bare GPU pipeline vs pure forward, 0.5 and 12 MP.

The GPU run (one H100/H200-class GPU, ViT-B-32 with random weights in fp16, no download):

    .venv/bin/python bench/gpu.py --sizes 0.5mp 12mp --images 4000 --images-12mp 256 \
        --batch 256 --embedder-cpus 6

The CPU dry run (no GPU needed; tiny counts, about 1-2 minutes on an idle 2-core box):

    .venv/bin/python bench/gpu.py --dry-run

Per JPEG size, on the same files, model and batch size:

    e2e      POST /upload of a stored ZIP, timed until every item is done (Redis `done` zset),
             through Ingress -> Redis -> Dispatcher -> one Embedder replica (`num_gpus: 1` when
             CUDA is present) -> IndexShard
    bare     the Embedder core's batched decode (nvJPEG + resize + normalise on the GPU, Pillow
             for what it routes to the CPU) and forward pass in this one process, the next
             batch decoding on a thread while this one runs forward: the in-process limit
    forward  the forward pass alone on random tensors already on the device

Targets (issue 14, ViT-B-32 on one H100/H200): e2e >= 3,000 img/s at 0.5 MP and e2e/bare
>= 0.85; for 12 MP the rate is reported with what bounds it (decode-only vs forward-only).
A fidelity check first compares the batched path's tensors with the Pillow path's (mean and
99th-percentile difference in 8-bit levels), including an EXIF-rotated and a corrupt JPEG.
Every fourth corpus JPEG carries EXIF orientation 6 (a phone held upright), so the rotation
runs as it does for phone photos. In a dry run (no CUDA) the service decodes with Pillow and
the "bare" path runs the same batched code with device "cpu": its figures are not GPU figures.
"""

from __future__ import annotations

import argparse
import io
import os
import threading
import time
import zipfile
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from common import (
    CACHE,
    VIT_B_32,
    one_embedder,
    print_machine,
    running_service,
    stored_zip,
    table,
    verdict,
)
from ingest import _steady_rate, photo_pixels
from PIL import Image

SIZES = {"0.5mp": (816, 612), "12mp": (4000, 3000)}
E2E_TARGET_IMG_S = 3_000  # at 0.5 MP
E2E_RATIO_TARGET = 0.85
ROTATED_EVERY = 4
CORPUS = CACHE / "gpu"


# --------------------------------------------------------------------------- the corpus


def make_jpeg(job: tuple[str, int]) -> Path:
    label, i = job
    path = CORPUS / label / f"img_{i:05d}.jpg"
    if path.exists():
        return path
    img = Image.fromarray(photo_pixels(10_000 + i, SIZES[label]))
    exif = Image.Exif()
    if i % ROTATED_EVERY == ROTATED_EVERY - 1:
        exif[0x0112] = 6
    tmp = path.with_name(path.name + ".tmp")
    img.save(tmp, "JPEG", quality=90, exif=exif.tobytes())
    tmp.replace(path)
    return path


def jpeg_set(label: str, n: int) -> list[Path]:
    """The first `n` JPEGs of size `label`, generated once into .cache/bench/gpu and reused."""
    (CORPUS / label).mkdir(parents=True, exist_ok=True)
    jobs = [(label, i) for i in range(n) if not (CORPUS / label / f"img_{i:05d}.jpg").exists()]
    if jobs:
        print(f"# generating {len(jobs)} {label} JPEGs into {CORPUS / label} (once)", flush=True)
        with ProcessPoolExecutor(min(len(jobs), os.cpu_count() or 1)) as pool:
            list(pool.map(make_jpeg, jobs, chunksize=8))
    return [CORPUS / label / f"img_{i:05d}.jpg" for i in range(n)]


def jpeg_zip(label: str, paths: list[Path]) -> Path:
    return stored_zip(CORPUS / f"{label}-{len(paths)}.zip", paths, label)


# --------------------------------------------------------------------------- in process


def new_core(device: str, threads: int) -> Any:
    import torch

    from lumen.config import Settings
    from lumen.worker import EmbedderCore

    torch.set_num_threads(threads)
    return EmbedderCore(Settings(model=VIT_B_32), "bare", threads=threads, decode_device=device)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bare_pipeline(core: Any, paths: list[Path], batch: int, device: str) -> dict[str, float]:
    """Decode batch i+1 on a thread while batch i runs forward; also decode-only time."""
    decoder = core.batch_decoder
    chunks = [paths[i : i + batch] for i in range(0, len(paths), batch)]
    decode_s = 0.0

    def decode(chunk: list[Path]) -> list[Any]:
        nonlocal decode_s
        t0 = time.perf_counter()
        out = decoder.decode(chunk)
        _sync(device)
        decode_s += time.perf_counter() - t0
        return out

    core.embed_tensors([t for t in decode(chunks[0]) if not isinstance(t, Exception)])  # warm
    decode_s, failed = 0.0, 0
    t0 = time.perf_counter()
    with ThreadPoolExecutor(1) as ahead:
        pending = ahead.submit(decode, chunks[0])
        for nxt in [*chunks[1:], None]:
            tensors = pending.result()
            if nxt is not None:
                pending = ahead.submit(decode, nxt)
            good = [t for t in tensors if not isinstance(t, Exception)]
            failed += len(tensors) - len(good)
            core.embed_tensors(good)
    bare_s = time.perf_counter() - t0
    return {"bare_s": bare_s, "decode_s": decode_s, "failed": failed}


def pure_forward(core: Any, n: int, batch: int, device: str) -> float:
    """Seconds for the forward pass (and captions, as the Embedder does) of `n` random inputs."""
    import torch

    side = int(core.model.image_size)
    dtype = core.batch_decoder.dtype
    x = torch.randn(batch, 3, side, side, device=device).to(dtype)
    rows = list(x.unbind(0))
    core.embed_tensors(rows)
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        core.embed_tensors(rows[: min(batch, n - start)])
    _sync(device)
    return time.perf_counter() - t0


def routes(paths: list[Path], max_pixels: int) -> str:
    from lumen.gpu_decode import plan_decode

    counts = Counter(plan_decode(p.read_bytes(), max_pixels).route.value for p in paths)
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))


def fidelity(core: Any) -> list[list[object]]:
    """Batched path vs the worker's Pillow path, in 8-bit levels, on a few kinds of JPEG."""
    import torch

    std = torch.tensor(core.batch_decoder.spec.std).view(3, 1, 1) * 255
    cases: dict[str, bytes] = {}
    for label, size in SIZES.items():
        cases[label] = _encode(photo_pixels(77, size))
    cases["0.5mp exif 6"] = _encode(photo_pixels(78, SIZES["0.5mp"]), orientation=6)
    cases["0.5mp exif 8"] = _encode(photo_pixels(79, SIZES["0.5mp"]), orientation=8)
    good = cases["0.5mp"]
    cases["corrupt (truncated)"] = good[: len(good) // 2]
    out = decode_all(core, list(cases.values()))
    rows: list[list[object]] = []
    for (name, data), got in zip(cases.items(), out, strict=True):
        try:
            want = core.decode_bytes(data)
        except Exception as exc:  # noqa: BLE001 - Pillow refuses it too
            want = exc
        if isinstance(got, Exception) or isinstance(want, Exception):
            same = type(got).__name__ == type(want).__name__
            rows.append([name, "-", "-", f"batched {type(got).__name__}, Pillow "
                         f"{type(want).__name__}: {'same' if same else 'DIFFERENT'}"])  # fmt: skip
            continue
        diff = (got.float().cpu() - want.float()).abs() * std
        q99 = float(diff.flatten().quantile(0.99))
        ok = float(diff.mean()) <= 3 and q99 <= 10
        rows.append([name, f"{float(diff.mean()):.2f}", f"{q99:.1f}", "ok" if ok else "CHECK"])
    return rows


def decode_all(core: Any, blobs: list[bytes]) -> list[Any]:
    return list(core.batch_decoder.decode(blobs))


def _encode(pixels: np.ndarray, orientation: int | None = None) -> bytes:
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=90, exif=exif.tobytes())
    return out.getvalue()


# --------------------------------------------------------------------------- the service


def run_service(
    corpora: dict[str, tuple[list[Path], Path]], cpus: int, batch: int, gpu: bool
) -> dict[str, dict[str, float]]:
    """Upload each size's ZIP, one after the other, to one app with one Embedder replica."""

    tweak = one_embedder(
        cpus,
        num_gpus=1 if gpu else 0,
        user_config={"max_batch_size": batch, "batch_wait_timeout_s": 0.01},
        max_ongoing_requests=max(64, 2 * batch),
    )
    results: dict[str, dict[str, float]] = {}
    ray_cpus = max(4, min(os.cpu_count() or 4, cpus + 4))
    with running_service({"model": VIT_B_32.model_dump()}, tweak, ray_cpus=ray_cpus) as svc:
        warm_paths, warm_zip = corpora[next(iter(corpora))]
        warm = _sub_zip(warm_paths[: min(8, len(warm_paths))], "warm")
        user, headers = svc.new_user("gpuwarm")
        svc.upload_zip(headers, warm)  # first batches pay lazy init (cuDNN, nvJPEG)
        svc.wait_settled(user, min(8, len(warm_paths)))
        for label, (paths, zip_path) in corpora.items():
            user, headers = svc.new_user(f"gpu{label.replace('.', '')}")
            t0 = time.time()
            box: dict[str, float] = {}

            def upload(
                h: dict[str, str] = headers, z: Path = zip_path, b: dict[str, float] = box
            ) -> None:
                svc.upload_zip(h, z)
                b["t"] = time.time()

            uploader = threading.Thread(target=upload)
            uploader.start()
            t_end = svc.wait_settled(user, len(paths))
            uploader.join()
            done, errors = svc.settled(user)
            times = sorted(svc.done_times(user).values())
            results[label] = {
                "e2e_s": t_end - t0,
                "upload_s": box["t"] - t0,
                "process_s": t_end - box["t"],
                "steady": _steady_rate(times),
                "done": done,
                "errors": errors,
            }
            print(f"# service {label}: {results[label]}", flush=True)
    return results


def _sub_zip(paths: list[Path], name: str) -> Path:
    path = CORPUS / f"{name}-{len(paths)}.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for p in paths:
            zf.write(p, f"{name}/{p.name}")
    return path


# --------------------------------------------------------------------------- report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=["0.5mp", "12mp"])
    parser.add_argument("--images", type=int, default=4000, help="0.5 MP JPEGs")
    parser.add_argument("--images-12mp", type=int, default=256)
    parser.add_argument("--batch", type=int, default=256, help="the Embedder's max_batch_size")
    parser.add_argument("--embedder-cpus", type=int, default=6, help="CPUs of the replica")
    parser.add_argument("--no-service", action="store_true", help="bare and forward only")
    parser.add_argument("--dry-run", action="store_true", help="CPU, 16 + 4 images, batch 8")
    args = parser.parse_args()
    import torch

    gpu = torch.cuda.is_available()
    if args.dry_run:
        args.images, args.images_12mp, args.batch, args.embedder_cpus = 16, 4, 8, 1
    device = "cuda" if gpu and not args.dry_run else "cpu"
    print_machine()
    print(f"# decode/model device: {device}"
          + (f" ({torch.cuda.get_device_name(0)})" if device == "cuda" else
             " -- NOT a GPU run: the service decodes with Pillow, bare runs the batched code on"
             " the CPU; no figure here is a GPU figure"), flush=True)  # fmt: skip
    counts = {"0.5mp": args.images, "12mp": args.images_12mp}
    corpora = {}
    for label in args.sizes:
        paths = jpeg_set(label, counts[label])
        corpora[label] = (paths, jpeg_zip(label, paths))
        mb = corpora[label][1].stat().st_size / 1e6
        print(f"# {label}: {len(paths)} JPEGs {SIZES[label]}, ZIP {mb:.0f} MB", flush=True)

    core = new_core(device, args.embedder_cpus)
    table(
        f"Fidelity: batched decode ({device}) vs the Pillow path, 8-bit levels",
        ["JPEG", "mean", "p99", "verdict (mean <= 3, p99 <= 10)"],
        fidelity(core),
    )
    refs = {}
    for label, (paths, _) in corpora.items():
        refs[label] = bare_pipeline(core, paths, args.batch, device)
        refs[label]["forward_s"] = pure_forward(core, len(paths), args.batch, device)
        refs[label]["routes"] = routes(paths, core.settings.limits.max_image_pixels)  # type: ignore[assignment]
        print(f"# bare {label}: {refs[label]}", flush=True)
    core.batch_decoder.close()
    del core
    if device == "cuda":
        torch.cuda.empty_cache()

    svc = {} if args.no_service else run_service(corpora, args.embedder_cpus, args.batch, gpu)
    rows = []
    for label, (paths, _) in corpora.items():
        n, ref = len(paths), refs[label]
        bare, fwd, dec = n / ref["bare_s"], n / ref["forward_s"], n / ref["decode_s"]
        bound = "decode" if dec < fwd else "forward"
        s = svc.get(label)
        e2e = n / s["e2e_s"] if s else float("nan")
        target = verdict(e2e >= E2E_TARGET_IMG_S) if label == "0.5mp" and s else "-"
        rows.append([
            label, n, ref["routes"], f"{e2e:.1f}",
            f"{n / s['process_s']:.1f}" if s else "-", f"{s['steady']:.1f}" if s else "-",
            f"{bare:.1f}", f"{dec:.1f}", f"{fwd:.1f}", f"{e2e / bare:.2f}",
            verdict(e2e / bare >= E2E_RATIO_TARGET) if s else "-", target, bound,
        ])  # fmt: skip
    table(
        f"GPU path ({device}, batch {args.batch}, Embedder {args.embedder_cpus} CPUs"
        f"{', 1 GPU' if gpu else ''}): images/s",
        ["JPEGs", "images", "routes (bare)", "e2e", "process-only", "steady", "bare",
         "decode-only", "forward", "e2e/bare", f"e2e/bare >= {E2E_RATIO_TARGET}",
         f"e2e >= {E2E_TARGET_IMG_S} (0.5 MP)", "bare bound by"],
        rows,
    )  # fmt: skip


if __name__ == "__main__":
    main()
