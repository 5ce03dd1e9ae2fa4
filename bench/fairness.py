"""Fairness under load: light users' time-to-done while a heavy user has 10,000 items queued.

A heavy user uploads `--heavy` tiny images (64x64 JPEGs); once its work is flowing, `--light`
users upload `--per-light` images each, all at once. Reported: the light items' time from
their upload's answer (when they are queued) to their commit (the `done` zset's score), p50 /
p95 / max, against what the heavy user's throughput says those items cost:

    one light upload   per_light / heavy_rate   (the light user's own items, back to back)
    all light uploads  light * per_light / heavy_rate (everything queued after the heavy one)

A FIFO would make light users wait for the heavy backlog (heavy / rate); round robin should
keep their p95 near the second bound. The model is the tests' tiny trained CLIP (32x32
input, 64 dims), so per-item service overheads (dispatcher, Serve, Redis), which is what
fairness is about, dominate, and 10,000 items take about a minute, not an hour as with
ViT-B-32 on 2 cores. configs/local.yaml is deployed as shipped (1..2 Embedder replicas).

    python bench/fairness.py --heavy 10000 --light 20 --per-light 10
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

from common import pct, print_machine, random_jpeg_zip, running_service, table, verdict


def tiny_zip(name: str, count: int, seed: int) -> Path:
    """A ZIP of `count` distinct 64x64 JPEGs, cached."""
    return random_jpeg_zip("tiny", name, count, seed, pixels=8, side=64)


SOLO_TARGET = 0.8  # batches stay full across users: the light users cost no throughput


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heavy", type=int, default=10_000)
    parser.add_argument("--light", type=int, default=20)
    parser.add_argument("--per-light", type=int, default=10)
    parser.add_argument(
        "--head-start", type=int, default=500, help="heavy items done before the light users arrive"
    )
    args = parser.parse_args()
    print_machine()
    from tests.support.tiny_clip import ensure_tiny_clip

    model = ensure_tiny_clip().model_settings().model_dump()
    heavy_zip = tiny_zip("heavy", args.heavy, 1)
    light_zips = [tiny_zip("light", args.per_light, 100 + i) for i in range(args.light)]

    with running_service({"model": model}) as svc:
        heavy, heavy_headers = svc.new_user("heavy")
        lights = [svc.new_user("light") for _ in range(args.light)]
        t0 = time.time()
        queued = len(svc.upload_zip(heavy_headers, heavy_zip)["queued"])
        t_heavy_queued = time.time()
        while svc.settled(heavy)[0] < min(args.head_start, queued):
            time.sleep(0.05)
        heavy_before = svc.settled(heavy)[0]
        t_arrive = time.time()

        answered: dict[str, tuple[float, float]] = {}

        def upload(user: str, headers: dict[str, str], zip_path: Path) -> None:
            start = time.time()
            svc.upload_zip(headers, zip_path)
            answered[user] = (start, time.time())

        threads = [
            threading.Thread(target=upload, args=(u, h, z))
            for (u, h), z in zip(lights, light_zips, strict=True)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for user, _ in lights:
            svc.wait_settled(user, args.per_light)
        t_light_done = time.time()
        heavy_during = svc.settled(heavy)[0] - heavy_before
        svc.wait_settled(heavy, queued, timeout_s=3600)
        t_heavy_done = time.time()

        ttd, ttd_from_request = [], []
        for user, _ in lights:
            start, queued_at = answered[user]
            for done_at in svc.done_times(user).values():
                ttd.append(done_at - queued_at)
                ttd_from_request.append(done_at - start)
        heavy_times = sorted(svc.done_times(heavy).values())
        svc_light_times = {user: list(svc.done_times(user).values()) for user, _ in lights}
    window = t_light_done - t_arrive
    light_total = args.light * args.per_light
    heavy_rate = (len(heavy_times) - 1) / (heavy_times[-1] - heavy_times[0])
    # Solo: the heavy user's steady rate before anyone else arrived (its first fifth of the
    # head start is warm-up), against its rate and everyone's while the light users are active.
    solo = [t for t in heavy_times if t <= t_arrive][heavy_before // 5 :]
    solo_rate = (len(solo) - 1) / (solo[-1] - solo[0])
    during_rate = heavy_during / window
    all_during_rate = (heavy_during + light_total) / window
    # The same once every light upload has been answered (all their items queued): the
    # dispatch path alone, without the 20 uploads' own CPU on the box.
    t_queued = max(queued_at for _, queued_at in answered.values())
    light_times = [t for user, _ in lights for t in svc_light_times[user]]
    in_queued = sum(t_queued <= t <= t_light_done for t in light_times)
    heavy_queued = sum(t_queued <= t <= t_light_done for t in heavy_times)
    queued_window = max(t_light_done - t_queued, 1e-9)
    p95 = pct(ttd, 95)
    print(
        f"# heavy upload {t_heavy_queued - t0:.1f} s for {queued} items; all heavy done"
        f" {t_heavy_done - t_heavy_queued:.1f} s after queueing",
        flush=True,
    )
    table(
        f"Fairness: 1 heavy user ({queued:,} queued) + {args.light} light users"
        f" ({args.per_light} each), tiny CLIP, 64x64 JPEGs",
        [
            "heavy rate img/s",
            "light p50 s",
            "light p95 s",
            "light max s",
            "p95 from request s",
            "one upload at heavy rate s",
            "all light at heavy rate s",
            "p95 / all-light bound",
            "heavy backlog at arrival s (FIFO wait)",
            "heavy img/s while light active",
        ],
        [
            [
                f"{heavy_rate:.0f}",
                f"{pct(ttd, 50):.2f}",
                f"{p95:.2f}",
                f"{max(ttd):.2f}",
                f"{pct(ttd_from_request, 95):.2f}",
                f"{args.per_light / heavy_rate:.2f}",
                f"{light_total / heavy_rate:.2f}",
                f"{p95 / (light_total / heavy_rate):.2f}",
                f"{(queued - heavy_before) / heavy_rate:.0f}",
                f"{during_rate:.0f}",
            ]
        ],
    )
    table(
        "Throughput while the light users are active, against the heavy user's solo rate",
        [
            "window",
            "s",
            "heavy solo img/s",
            "heavy img/s, light active",
            "heavy / solo",
            "all users img/s, light active",
            "all / solo",
            f">= {SOLO_TARGET}",
        ],
        [
            [
                "light uploads start -> light all done",
                f"{window:.2f}",
                f"{solo_rate:.0f}",
                f"{during_rate:.0f}",
                f"{during_rate / solo_rate:.2f}",
                f"{all_during_rate:.0f}",
                f"{all_during_rate / solo_rate:.2f}",
                verdict(all_during_rate / solo_rate >= SOLO_TARGET),
            ],
            [
                "all light items queued -> light all done",
                f"{queued_window:.2f}",
                f"{solo_rate:.0f}",
                f"{heavy_queued / queued_window:.0f}",
                f"{heavy_queued / queued_window / solo_rate:.2f}",
                f"{(heavy_queued + in_queued) / queued_window:.0f}",
                f"{(heavy_queued + in_queued) / queued_window / solo_rate:.2f}",
                verdict((heavy_queued + in_queued) / queued_window / solo_rate >= SOLO_TARGET),
            ],
        ],
    )


if __name__ == "__main__":
    main()
