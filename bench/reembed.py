"""Re-embedding throughput against normal ingest, on this box, in the same run (issue 17).

1. A private Redis, Ray (4 logical CPUs, as the tests) and the app with the tiny test model
   A; user `old` uploads N random JPEGs, embedded with A (not measured).
2. The app is redeployed with model B, ViT-B-32 with random weights (timing only), with
   `reindex.auto_start` off so each phase is measured alone:
   - ingest: user `new` uploads N JPEGs; upload to the last done item (the Embedder: one
     replica of 1 CPU, autoscaling up to 2);
   - re-embed: the Reembedder is started for `old`; its start-up (to the first batch
     written: Ray Data planning, the pool actor loading B) and its steady rate after that
     (`reindex.share` 0.25 of 4 CPUs: one pool actor of 1 CPU) are reported apart.
Prints a Markdown table; asserts nothing.
"""

from __future__ import annotations

import argparse
import time

from common import VIT_B_32, print_machine, random_jpeg_zip, running_service, table

from lumen.config import Settings


def _progress(settings: Settings, user: str) -> dict[str, int | str]:
    from lumen.storage import Stores

    return Stores(settings).spaces.progress(user) or {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=96, help="images per phase (default 96)")
    args = parser.parse_args()
    print_machine()
    from deploy import deploy
    from tests.support.tiny_clip import ensure_tiny_clip

    tiny = ensure_tiny_clip().model_settings().model_dump()
    b = VIT_B_32.model_dump()
    overrides = {"model": tiny, "reindex": {"auto_start": False}}
    with running_service(overrides) as svc:
        old, h_old = svc.new_user("old")
        svc.upload_zip(h_old, random_jpeg_zip("reembed", "old", args.n, 1, 256, 256))
        svc.wait_settled(old, args.n)
        print(f"# {args.n} images embedded with model A", flush=True)

        config = svc.config
        config["applications"][0]["args"]["settings"]["model"] = b
        t = time.perf_counter()
        deploy(config, timeout_s=600)
        print(f"# redeployed with model B in {time.perf_counter() - t:.1f} s", flush=True)
        settings_b = svc.settings.model_copy(update={"model": VIT_B_32})

        new, h_new = svc.new_user("new")
        zip_new = random_jpeg_zip("reembed", "new", args.n, 2, 256, 256)
        t0 = time.time()
        svc.upload_zip(h_new, zip_new)
        t1 = svc.wait_settled(new, args.n)
        ingest_s = t1 - t0

        from actors.reembedder import get_reembedder

        t0 = time.time()
        get_reembedder(settings_b).start.remote(b, [old])
        first = None
        while True:
            p = _progress(settings_b, old)
            done = int(p.get("done", 0) or 0)
            if first is None and done > 0:
                first = (time.time(), done)
            if p.get("state") in ("switched", "failed"):
                break
            time.sleep(0.1)
        end = time.time()
        assert first is not None
        startup_s = first[0] - t0
        steady = (args.n - first[1]) / max(end - first[0], 1e-9)
        ingest = args.n / ingest_s
        table(
            f"Re-embedding vs ingest with model B (ViT-B-32, random), {args.n} images each",
            ("phase", "seconds", "img/s", "note"),
            [
                ("ingest (upload to last done)", f"{ingest_s:.1f}", f"{ingest:.1f}", "Embedder"),
                ("re-embed start-up", f"{startup_s:.1f}", "", "to the first batch written"),
                (
                    "re-embed steady",
                    f"{end - first[0]:.1f}",
                    f"{steady:.1f}",
                    f"ratio to ingest {steady / ingest:.2f}",
                ),
                ("re-embed total", f"{end - t0:.1f}", f"{args.n / (end - t0):.1f}", p["state"]),
            ],
        )


if __name__ == "__main__":
    main()
