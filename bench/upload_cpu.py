"""CPU seconds each process spends on one ZIP upload of 12 MP photos, and its wall time.

The upload alone: the benchmark-only null model (lumen/nullmodel.py: no decode, no model)
embeds what the upload queues, so the figures are the upload's own cost (the proxy
streaming the body, the ingress spooling, reading, hashing and storing it) and not
embedding's. Each round uploads the same ZIP (`bench/ingest.py`'s photos) as a fresh user
and waits for its items to settle before the next; the table gives each process's median.
The limit is measured in the same run: the body's bytes over the wall time of the upload
against the rate at which this box merely copies the same file (`cp`-like, page cache warm).

    python bench/upload_cpu.py --images 200 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from common import print_machine, running_service, table
from ingest import CpuSampler, photo_set, photo_zip, process_pids

from lumen.nullmodel import BENCHMARK_ENV, BENCHMARK_ENV_VALUE

WATCHED = ("Ingress", "ProxyActor", "bench (driver)", "redis-server", "Dispatcher")


def copy_s(path: Path) -> float:
    """Seconds to copy `path` once on this box (the floor for spooling it)."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        shutil.copyfile(path, Path(tmp) / "copy")
        return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ[BENCHMARK_ENV] = BENCHMARK_ENV_VALUE  # before Ray starts: workers inherit it
    print_machine()
    zip_path = photo_zip(photo_set(args.images))
    mb = zip_path.stat().st_size / 1e6
    print(f"# ZIP {mb:.0f} MB, {args.images} photos", flush=True)
    cpu: dict[str, list[float]] = {}
    walls: list[float] = []
    with running_service({"model": {"benchmark_null": True}}) as svc:
        redis_pid = int(svc.redis.info("server")["process_id"])
        pids = process_pids(redis_pid)
        for _ in range(args.rounds):
            user, headers = svc.new_user("up")
            sampler = CpuSampler(pids)
            sampler.start()
            t0 = time.perf_counter()
            resp = svc.upload_zip(headers, zip_path)
            walls.append(time.perf_counter() - t0)
            for name, used in sampler.stop().items():
                cpu.setdefault(name, []).append(used)
            svc.wait_settled(user, len(resp["queued"]))
    copy = min(copy_s(zip_path) for _ in range(2))
    wall = statistics.median(walls)
    rows = [
        [name, f"{statistics.median(cpu[name]):.2f}", " / ".join(f"{v:.2f}" for v in cpu[name])]
        for name in sorted(cpu, key=lambda n: -statistics.median(cpu[n]))
        if any(n in name for n in WATCHED) or statistics.median(cpu[name]) > 0.1
    ]
    rows.append(["(wall s of the upload)", f"{wall:.2f}", " / ".join(f"{w:.2f}" for w in walls)])
    table(
        f"CPU seconds per process for one {mb:.0f} MB upload", ["process", "median", "rounds"], rows
    )
    table(
        "Upload rate vs copying the same file on this box",
        ["upload MB/s", "copy MB/s", "upload / copy"],
        [[f"{mb / wall:.0f}", f"{mb / copy:.0f}", f"{copy / wall:.2f}"]],
    )


if __name__ == "__main__":
    main()
