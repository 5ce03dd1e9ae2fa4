"""Words in photos: what OCR costs ingest, for photos with words and without, vs OCR off.

One run measures, on the same images:

    pre-check   in this process: the Embedder's decode of each photo (JPEG draft mode for a
                224-pixel model + preprocess) and the pre-check on that decode (lumen/ocr.py),
                in ms per photo, and how many photos of each set pass it
    service     a fresh app with `ocr.photos` off, then one with it on (ViT-B-32, random
                init; one Embedder replica with `--embedder-cpus` CPUs and the default OCR
                pool of one Tesseract). Each set is uploaded, then processed again with no
                upload (bench/ingest.py's `processing_only`): items/s of processing alone,
                the best of `RUNS` runs.

Sets: `plain`, photo-like pictures without words (bench/ingest.py's corpus: 12 MP JPEGs,
1 in 20 PNG or HEIC), and `words`, 1600x1200 JPEGs of signs, receipts and screenshots.
Target: the plain set keeps >= 0.95 of its OCR-off throughput with OCR on (a photo without
text costs no more than before); the words set's ratio is what OCR costs and is reported.

    python bench/ocr_photos.py --plain 48 --words 24 --embedder-cpus 2
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from common import (
    CACHE,
    VIT_B_32,
    one_embedder,
    print_machine,
    running_service,
    stored_zip,
    table,
)
from ingest import photo_set, processing_only
from PIL import Image, ImageDraw

from lumen.ingest.images import open_image
from lumen.ocr import CHECK_DRAFT_SIDE, may_show_text
from tests.support.photos import font, receipt, sign

PLAIN_TARGET = 0.95
RUNS = 2  # processing runs per set and setting; the best counts (the box is shared)
WORDS = CACHE / "ocr_words"
_VOCAB = (
    *("PARKING", "EXIT", "ENTRANCE", "CAFE", "OPEN", "CLOSED", "SALE", "PHARMACY", "STATION"),
    *("PLATFORM", "TICKETS", "MUSEUM", "HOTEL", "BAKERY", "TAXI", "BUS", "STOP", "NO", "ENTRY"),
    *("LEFT", "RIGHT", "FLOOR", "MENU", "TODAY", "SOUP", "COFFEE", "TEA"),
)


def screenshot(rng: random.Random) -> Image.Image:
    """A chat or settings screen: lines of text on white."""
    img = Image.new("RGB", (1600, 1200), (250, 250, 250))
    draw = ImageDraw.Draw(img)
    face = font(30)
    for line in range(14):
        words = " ".join(rng.choice(_VOCAB).lower() for _ in range(rng.randint(3, 8)))
        draw.text((60, 60 + line * 75), words, font=face, fill=(30, 30, 30))
    return img


def words_photo(i: int) -> Image.Image:
    rng = random.Random(i)
    kind = i % 3
    if kind == 0:
        text = " ".join(rng.choice(_VOCAB) for _ in range(2)) + f" {rng.randint(1, 99)}"
        colour = (rng.randint(0, 120), rng.randint(0, 120), rng.randint(80, 220))
        return sign(text, size=(1600, 1200), font_px=110, background=colour)
    if kind == 1:
        return receipt(lines=24, first=i).resize((1067, 1200))
    return screenshot(rng)


def words_set(n: int) -> list[Path]:
    WORDS.mkdir(parents=True, exist_ok=True)
    paths = [WORDS / f"words_{i:04d}.jpg" for i in range(n)]
    for i, path in enumerate(paths):
        if not path.exists():
            words_photo(i).save(path, "JPEG", quality=90)
    return paths


def precheck_costs(paths: list[Path]) -> tuple[float, float, int]:
    """(decode ms, pre-check ms, photos passing) per photo, as the Embedder decodes."""
    decode = check = 0.0
    passed = 0
    side = CHECK_DRAFT_SIDE
    for path in paths:
        t0 = time.perf_counter()
        img = open_image(path, max_pixels=89_478_485, draft_size=(side, side))
        t1 = time.perf_counter()
        passed += may_show_text(img)
        t2 = time.perf_counter()
        decode += t1 - t0
        check += t2 - t1
    n = max(1, len(paths))
    return 1e3 * decode / n, 1e3 * check / n, passed


def service_rates(sets: dict[str, list[Path]], ocr: bool, cpus: int) -> dict[str, dict[str, float]]:
    """items/s of processing alone per set, on an app with `ocr.photos` = `ocr`."""

    overrides = {"model": VIT_B_32.model_dump(), "ocr": {"photos": ocr}}
    out: dict[str, dict[str, float]] = {}
    with running_service(overrides, one_embedder(cpus)) as svc:
        for name, paths in sets.items():
            rates = []
            for attempt in range(RUNS):  # a fresh user each time: nothing is a duplicate
                user, headers = svc.new_user(f"ocr{name[:2]}{attempt}")
                archive = stored_zip(CACHE / f"ocr-{name}-{len(paths)}.zip", paths, name)
                queued = len(svc.upload_zip(headers, archive)["queued"])
                svc.wait_settled(user, queued)
                rates.append(queued / processing_only(svc, user))
                words = svc.redis.hlen(svc.keys.ocr(f"{user}p"))
            out[name] = {"rate": max(rates), "runs": len(rates), "ocr_records": words}
            print(f"# ocr {'on' if ocr else 'off'}, {name}: {out[name]} {rates}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plain", type=int, default=48)
    parser.add_argument("--words", type=int, default=24)
    parser.add_argument("--embedder-cpus", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    print_machine()
    sets = {"plain": photo_set(args.plain), "words": words_set(args.words)}

    costs = {name: precheck_costs(paths) for name, paths in sets.items()}
    table(
        "pre-check on the Embedder's own decode (ms per photo)",
        ["set", "photos", "decode ms", "pre-check ms", "share", "pass the pre-check"],
        [
            [n, len(sets[n]), f"{d:.1f}", f"{c:.2f}", f"{c / d:.1%}", f"{p}/{len(sets[n])}"]
            for n, (d, c, p) in costs.items()
        ],
    )
    off = service_rates(sets, ocr=False, cpus=args.embedder_cpus)
    on = service_rates(sets, ocr=True, cpus=args.embedder_cpus)
    rows = []
    for name in sets:
        ratio = on[name]["rate"] / off[name]["rate"]
        verdict = f"target >= {PLAIN_TARGET}: {'met' if ratio >= PLAIN_TARGET else 'NOT met'}"
        rows.append(
            [
                name,
                len(sets[name]),
                f"{off[name]['rate']:.2f}",
                f"{on[name]['rate']:.2f}",
                f"{ratio:.2f}",
                int(on[name]["ocr_records"]),
                verdict if name == "plain" else "the cost of reading words",
            ]
        )
    table(
        f"processing items/s, one Embedder replica ({args.embedder_cpus} CPUs), OCR off vs on",
        ["set", "photos", "OCR off", "OCR on", "on/off", "OCR records", "verdict"],
        rows,
    )
    if args.json:
        args.json.write_text(json.dumps({"precheck": costs, "off": off, "on": on}, indent=1))


if __name__ == "__main__":
    main()
