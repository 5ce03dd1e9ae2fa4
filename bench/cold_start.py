"""Cold start of one Embedder replica, split: process start, imports, weight load (issue 18).

1. A ViT-B-32-sized checkpoint with random weights (open_clip `create_model("ViT-B-32")`,
   saved as safetensors, ~600 MB fp32) is staged with `lumen.models.pull` from a local
   file, as `lumen models pull --from` would, under `.cache/cold_start/`.
2. A fresh Python process does what a replica does before its first request: start, import
   torch/open_clip and the Embedder's modules, load the staged weights (size + sha256
   checked, then open_clip builds the model and loads the file), and get the caption
   vocabulary's vectors (encoded by the first replica, then loaded from beside the weights).
   Repeated; medians.
3. The whole path with `min_replicas: 0`: a private Redis, Ray and the Serve app whose
   Embedder loads the staged weights and starts with no replica; one image is uploaded and
   the time to its first done item is split at the replica's start.

Target: weights load <= 5 s here. Prints Markdown tables; asserts nothing.
"""

from __future__ import annotations

import time

_T0 = time.time()  # the first thing this process does: the end of "process start"

import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CACHE = ROOT / ".cache" / "cold_start"
NAME, TAG = "ViT-B-32", "random-bench"
TARGET_LOAD_S = 5.0
RUNS = 3


def child(staged_dir: str) -> None:
    """One replica's cold start in this fresh process; prints the split as JSON."""
    t = time.perf_counter()
    import open_clip  # noqa: F401
    import torch  # noqa: F401

    ml_imports = time.perf_counter() - t
    t = time.perf_counter()
    import deployments.embedder  # noqa: F401  (ray.serve, lumen.worker, decoders ...)
    from lumen.config import ModelSettings
    from lumen.embedding import ClipModel
    from lumen.models import read_staged, sha256_of

    app_imports = time.perf_counter() - t
    torch.set_num_threads(1)  # as a replica with num_cpus: 1
    staged = read_staged(staged_dir, NAME, TAG, verify=False)
    t = time.perf_counter()
    sha256_of(staged.file)
    checksum = time.perf_counter() - t
    model = ModelSettings(name=NAME, pretrained=TAG, staged_dir=staged_dir)
    t = time.perf_counter()
    clip = ClipModel.from_settings(model, device="cpu")
    load = time.perf_counter() - t
    from lumen.captions import Captioner
    from lumen.models import derived_dir

    t = time.perf_counter()
    # What EmbedderCore does next: the caption vocabulary's vectors, kept beside the weights.
    Captioner(clip, cache_dir=derived_dir(model))
    captions = time.perf_counter() - t
    print(
        json.dumps(
            {
                "t0": _T0, "ml_imports": ml_imports, "app_imports": app_imports,
                "checksum": checksum, "load": load, "captions": captions, "dim": clip.dim,
            }
        )
    )  # fmt: skip


def stage() -> tuple[Path, float]:
    """The staged random ViT-B-32 (made once), and how long staging took this run."""
    import open_clip
    import torch
    from safetensors.torch import save_model

    from lumen.models import Source, pull

    source = CACHE / "source" / f"{NAME}-{TAG}.safetensors"
    if not source.is_file():
        source.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        save_model(open_clip.create_model(NAME), str(source))
    staged_dir = CACHE / "staged"
    t = time.perf_counter()
    staged, fetched = pull(NAME, TAG, staged_dir, Source(source.as_uri()))
    took = time.perf_counter() - t
    print(f"# staged {staged.file} ({staged.bytes / 1024**2:.0f} MB), sha256 {staged.sha256[:12]}"
          f"… {'copied' if fetched else 'already there'} in {took:.1f} s", flush=True)  # fmt: skip
    return staged_dir, took


def replica_split(staged_dir: Path) -> list[dict[str, float]]:
    """RUNS fresh replicas; the first finds no cached caption vectors, the others do."""
    import shutil

    for derived in staged_dir.glob(f"{NAME}/{TAG}/derived-*"):
        shutil.rmtree(derived)
    runs = []
    for _ in range(RUNS):
        t0 = time.time()
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(staged_dir)],
            cwd=ROOT, capture_output=True, text=True, check=True,
        )  # fmt: skip
        total = time.time() - t0
        split = json.loads(out.stdout.strip().splitlines()[-1])
        split["process_start"] = split["t0"] - t0
        split["total"] = total
        runs.append(split)
    return runs


def upload_to_done(staged_dir: Path) -> dict[str, float]:
    """Upload one image to an app whose Embedder is scaled to zero; time to the done item."""
    from ray import serve

    from bench.common import running_service, set_deployment
    from tests.support.hostile import make_png, make_zip

    def tweak(config: dict[str, object]) -> None:
        set_deployment(
            config, "Embedder", ray_actor_options={"num_cpus": 1},
            autoscaling_config={"min_replicas": 0, "initial_replicas": 0, "max_replicas": 1},
        )  # fmt: skip

    model = {"name": NAME, "pretrained": TAG, "staged_dir": str(staged_dir)}
    with running_service({"model": model}, tweak, ray_cpus=4) as svc:

        def replicas() -> dict[str, int]:
            app = serve.status().applications[svc.settings.app_name]
            states = app.deployments["Embedder"].replica_states or {}
            return {str(getattr(k, "value", k)): int(v) for k, v in states.items()}

        assert not replicas().get("RUNNING"), "the Embedder should start scaled to zero"
        user, headers = svc.new_user("cold")
        zip_path = CACHE / "one.zip"
        zip_path.write_bytes(make_zip({"a.png": make_png()}))
        t0 = time.time()
        svc.upload_zip(headers, zip_path)
        answered = time.time()
        scheduled = running = None
        while not sum(svc.settled(user)):
            states = replicas()
            if scheduled is None and states:
                scheduled = time.time()
            if running is None and states.get("RUNNING"):
                running = time.time()
            time.sleep(0.05)
        done = time.time()
        return {
            "upload_answered": answered - t0,
            "replica_requested": (scheduled or done) - t0,
            "replica_running": (running or done) - t0,
            "first_done": done - t0,
        }


def main() -> None:
    from bench.common import print_machine, table, verdict

    print_machine()
    staged_dir, staging_s = stage()
    runs = replica_split(staged_dir)

    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    def later(key: str) -> float:
        return statistics.median(r[key] for r in runs[1:])

    load = med("load")
    table(
        f"One replica's cold start, ViT-B-32 staged weights ({RUNS} fresh processes, medians)",
        ["phase", "seconds"],
        [
            ["process start (interpreter up)", med("process_start")],
            ["imports: torch + open_clip", med("ml_imports")],
            ["imports: the Embedder's modules (ray.serve, lumen)", med("app_imports")],
            ["weight load: sha256 of the staged file (part of the load below)", med("checksum")],
            ["weight load: checked, built and loaded (ClipModel.from_settings)", load],
            ["caption vocabulary: encoded by the first replica", runs[0]["captions"]],
            ["caption vocabulary: loaded by every later one", later("captions")],
            ["total, the first replica (process start to ready)", runs[0]["total"]],
            ["total, every later replica", later("total")],
        ],
    )
    met = verdict(load <= TARGET_LOAD_S)
    print(f"weights load {load:.2f} s, target <= {TARGET_LOAD_S:.0f} s: {met}")
    print(f"staging (pull from a local file, once per cluster): {staging_s:.1f} s")
    flow = upload_to_done(staged_dir)
    table(
        "First upload to first done item, Embedder at min_replicas: 0",
        ["from the upload's start to", "seconds"],
        [
            ["upload answered", flow["upload_answered"]],
            ["a replica requested by Serve", flow["replica_requested"]],
            ["the replica running", flow["replica_running"]],
            ["the first item done", flow["first_done"]],
        ],
    )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(sys.argv[2])
    else:
        main()
