"""Run every benchmark with small defaults (`make bench`); each prints its own tables.

Small: ingest 60 photos with the shipped 1-CPU Embedder, search at 1k and 100k, rebuild
at 100k, fairness with 2,000 heavy items, sharing with `--quick`, the control plane (null
model) with `--quick`. docs/benchmarks.md lists the full-size commands (200 photos at 1 and
2 CPUs, 1M vectors, 10,000 heavy items) and their results.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

RUNS: list[list[str]] = [
    ["ingest.py", "--images", "60", "--embedder-cpus", "1"],
    ["search.py", "--sizes", "1k", "100k", "--queries", "50"],
    ["rebuild.py", "--sizes", "100k"],
    ["fairness.py", "--heavy", "2000", "--light", "20", "--per-light", "10"],
    ["sharing.py", "--quick"],
    ["durability.py", "--items", "5000"],
    ["control_plane.py", "--quick"],
]


def main() -> None:
    failed = []
    for run in RUNS:
        print(f"\n## python bench/{' '.join(run)}\n", flush=True)
        t0 = time.perf_counter()
        code = subprocess.call([sys.executable, str(HERE / run[0]), *run[1:]])
        print(f"## exit {code} after {time.perf_counter() - t0:.0f} s", flush=True)
        if code != 0:
            failed.append(run[0])
    if failed:
        sys.exit(f"benchmarks that crashed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
