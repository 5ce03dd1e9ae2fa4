"""The model presets of docs/models.md: vector size, weights' size and CPU speed, random weights.

No weights can be downloaded here, so every model is built with random weights
(`pretrained=None`): the numbers are the architecture's cost, not its quality. Per model,
one process, `--threads` torch threads (2 by default), it times:

- `images/s`: `encode_image` on a random [`--batch`, 3, S, S] batch, S the model's input
  side (decode and resize are not included);
- `texts/s`: `encode_text` on a [`--batch`, context] batch of token ids, and `query ms`
  one text alone (a search query). Token ids are random: the SigLIP and xlm-roberta
  tokenizers are Hugging Face files that cannot be fetched here, so no row includes
  tokenizing (the CLIP tokenizer's cost is printed apart; it is small).

Each rate is the best of three windows, the one least disturbed by other work on the box
(it is shared); `loadavg 1 min` is read right after each model's timings.

xlm-roberta-base-ViT-B-32 needs `transformers`; without it its row says so. Its text
tower is built from xlm-roberta-base's published config, written locally (the hub's
`config.json` cannot be fetched here), with no Hugging Face weights.

    python bench/model_presets.py [--models ViT-B-32 ViT-L-14] [--threads 2] [--batch 16]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from common import print_machine, table


@dataclass(frozen=True)
class Preset:
    name: str
    tag: str
    use: str


PRESETS = [
    Preset("ViT-B-32", "laion2b_s34b_b79k", "default: fast, English"),
    Preset("xlm-roberta-base-ViT-B-32", "laion5b_s13b_b90k", "multilingual queries"),
    Preset("ViT-B-16-SigLIP", "webli", "SigLIP, English"),
    Preset("ViT-B-16", "laion2b_s34b_b88k", "quality, English"),
    Preset("ViT-L-14", "laion2b_s32b_b82k", "best quality, English"),
]

# xlm-roberta-base's config.json on the Hugging Face hub (the architecture's shape only).
XLM_ROBERTA_BASE: dict[str, Any] = {
    "model_type": "xlm-roberta",
    "architectures": ["XLMRobertaForMaskedLM"],
    "vocab_size": 250002,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "max_position_embeddings": 514,
    "type_vocab_size": 1,
    "layer_norm_eps": 1e-05,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
}
LOCAL_HF_CONFIGS: dict[str, dict[str, Any]] = {"xlm-roberta-base": XLM_ROBERTA_BASE}


def build(name: str, scratch: Path) -> torch.nn.Module:
    """`name` with random weights, a Hugging Face text tower from a local config if it has one."""
    cfg: dict[str, Any] = open_clip.get_model_config(name) or {}
    text_cfg = dict(cfg.get("text_cfg", {}))
    hf_name = text_cfg.get("hf_model_name")
    if not hf_name:
        return open_clip.create_model(name, pretrained=None)
    folder = scratch / hf_name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(LOCAL_HF_CONFIGS[hf_name]))
    text_cfg.update(
        hf_model_name=str(folder), hf_tokenizer_name=str(folder), hf_model_pretrained=False
    )
    return open_clip.create_model(name, pretrained=None, pretrained_text=False, text_cfg=text_cfg)


def rate(
    step: Callable[[], object],
    items: int,
    min_s: float,
    warm: Callable[[], object] | None = None,
    windows: int = 3,
) -> float:
    """Items per second of `step` (which handles `items`): the best of `windows` windows.

    One call of `warm` (or `step`) first. Each window runs `step` at least once and for at
    least `min_s / windows`; the best window is the one least disturbed by the box's other
    work (it is shared), so it is the closest to what the model does alone.
    """
    (warm or step)()
    best = 0.0
    for _ in range(windows):
        calls, t0 = 0, time.perf_counter()
        while calls < 1 or time.perf_counter() - t0 < min_s / windows:
            step()
            calls += 1
        best = max(best, items * calls / (time.perf_counter() - t0))
    return best


def measure(preset: Preset, batch: int, min_s: float, scratch: Path) -> list[object]:
    cfg: dict[str, Any] = open_clip.get_model_config(preset.name) or {}
    text_cfg = cfg.get("text_cfg", {})
    t0 = time.perf_counter()
    try:
        net: Any = build(preset.name, scratch).eval()
    except (RuntimeError, ImportError) as exc:
        reason = " ".join(str(exc).split())[:80]
        dim = cfg.get("embed_dim", "?")
        return [preset.name, preset.tag, dim, f"not built: {reason}", *[""] * 9]
    built_s = time.perf_counter() - t0
    params = sum(p.numel() for p in net.parameters())
    visual = sum(p.numel() for p in net.visual.parameters())
    size = open_clip.get_model_preprocess_cfg(net)["size"]
    side = size if isinstance(size, int) else max(size)
    context = int(text_cfg.get("context_length", 77))
    hf_config = LOCAL_HF_CONFIGS.get(text_cfg.get("hf_model_name", ""), {})
    vocab = int(text_cfg.get("vocab_size") or hf_config.get("vocab_size", 49408))
    images = torch.randn(batch, 3, side, side)
    gen = torch.Generator().manual_seed(0)
    texts = torch.randint(5, vocab, (batch, context), generator=gen)
    one = texts[:1]
    with torch.inference_mode():
        dim = int(net.encode_text(one).shape[-1])
        # warm up on two items: a whole batch of ViT-L-14 costs ~10 s here
        image_rate = rate(
            lambda: net.encode_image(images), batch, min_s, lambda: net.encode_image(images[:2])
        )
        text_rate = rate(lambda: net.encode_text(texts), batch, min_s, lambda: net.encode_text(one))
        query_rate = rate(lambda: net.encode_text(one), 1, min_s / 2)
    load = os.getloadavg()[0]
    return [
        preset.name, preset.tag, dim, side, f"{params / 1e6:.0f}", f"{visual / 1e6:.0f}",
        f"{params * 4 / 1024**2:.0f}", f"{params * 2 / 1024**2:.0f}",
        image_rate, text_rate, 1000 / query_rate, f"{built_s:.0f}", f"{load:.1f}",
    ]  # fmt: skip


def clip_tokenizer_rate(batch: int) -> float:
    tokenize = open_clip.get_tokenizer("ViT-B-32")
    texts = [f"a photo of a dog on a beach number {i}" for i in range(batch)]
    return rate(lambda: tokenize(texts), batch, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", help="preset names (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--min-seconds", type=float, default=4.0, help="per timed loop")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    chosen = [p for p in PRESETS if not args.models or p.name in args.models]
    print_machine()
    print(f"# torch threads {torch.get_num_threads()}, batch {args.batch}, random weights")
    rows = []
    with tempfile.TemporaryDirectory(prefix="lumen-presets-") as scratch:
        for preset in chosen:
            rows.append(measure(preset, args.batch, args.min_seconds, Path(scratch)))
            print(f"# {preset.name}: done", flush=True)
    header = [
        "model", "tag", "dim", "px", "params M", "image tower M", "fp32 MiB", "fp16 MiB",
        "images/s", "texts/s", "query ms", "build s", "loadavg 1 min",
    ]  # fmt: skip
    table("open_clip presets on CPU (random weights; encode only)", header, rows)
    print(f"CLIP tokenizer (ViT-B-32 etc.): {clip_tokenizer_rate(args.batch):.0f} texts/s")


if __name__ == "__main__":
    main()
