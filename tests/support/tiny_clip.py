"""A tiny open_clip model trained in-session on coloured shapes, cached on disk for tests.

No weights can be downloaded in CI, so tests get a real (if small) CLIP that has learned
something checkable: 4 colours x 3 shapes drawn with Pillow, matched to captions such as
"a photo of a red circle" with a contrastive loss. The trained checkpoint is keyed by a hash
of the architecture, the training parameters and this file's source, so a later session
loads it in well under a second and any edit here retrains.

Two architectures share that training: `MODEL_A` (64-d, what the tests and benches run on)
and `MODEL_B` (48-d, other widths and depth: the model the upgrade tests move a space to; it
learns the same shapes, so a space re-embedded with B still finds "a red circle").
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import shutil
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from safetensors.torch import load_file, save_file

from lumen.config import ModelSettings

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 165, 55),
    "blue": (35, 70, 215),
    "yellow": (235, 205, 30),
}
SHAPES = ("circle", "square", "triangle")
CLASSES: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLORS for s in SHAPES)


@dataclass(frozen=True)
class TinyArch:
    """One tiny architecture: its open_clip model name and model config."""

    name: str
    config: dict[str, Any]


def _vit_config(width: int, vision_layers: int) -> dict[str, Any]:
    """A ViT with `width`-d towers and vectors, 32x32 input, 8-pixel patches, 16 tokens."""
    return {
        "embed_dim": width,
        "vision_cfg": {
            "image_size": 32,
            "layers": vision_layers,
            "width": width,
            "head_width": width // 2,
            "patch_size": 8,
        },
        "text_cfg": {
            "context_length": 16,
            "vocab_size": 49408,
            "width": width,
            "heads": 2,
            "layers": 2,
        },
    }


MODEL_A = TinyArch("lumen-tiny", _vit_config(64, vision_layers=3))
MODEL_B = TinyArch("lumen-tiny-b", _vit_config(48, vision_layers=2))

TRAIN_PARAMS: dict[str, Any] = {
    "seed": 1234,
    "images_per_class": 160,
    "steps": 300,
    "batch_size": 128,
    "lr": 2e-3,
    "weight_decay": 0.05,
    # One thread: on a busy 2-core box two threads ran up to 9x slower (oversubscription).
    "threads": 1,
    "train_token_embedding": False,
}
# Held-out images are drawn from seeds far from the training pool's.
EVAL_SEED_OFFSET = 1_000_000
MIN_EVAL_ACCURACY = 11 / 12

_FULL_TEMPLATES = ("a {c} {s}", "a photo of a {c} {s}", "{c} {s}", "a picture of a {c} {s}")
_COLOR_TEMPLATES = ("a photo of a {c}", "something {c}", "{c}")
_SHAPE_TEMPLATES = ("a photo of a {s}", "a {s}", "{s}")


@dataclass(frozen=True)
class TinyClip:
    """Where the trained tiny model lives; `model_settings()` feeds `ClipModel.from_settings`."""

    name: str
    config_file: Path
    checkpoint: Path
    train_seconds: float
    eval_accuracy: float

    def model_settings(self) -> ModelSettings:
        return ModelSettings(
            name=self.name,
            pretrained=None,
            checkpoint=str(self.checkpoint),
            config_file=str(self.config_file),
            fp16_on_gpu=False,
        )


def default_cache_dir() -> Path:
    """`.cache/tiny_clip/` in the repository root (git-ignored)."""
    return Path(__file__).resolve().parents[2] / ".cache" / "tiny_clip"


def draw_shape(color: str, shape: str, size: int = 256, seed: int = 0) -> Image.Image:
    """Draw one `color` `shape` at a random place and scale on a noisy white/grey background."""
    rng = random.Random(f"{color}/{shape}/{size}/{seed}")
    noise_rng = np.random.default_rng(zlib.crc32(f"{color}/{shape}/{size}/{seed}".encode()))
    grey = rng.randint(200, 255)
    background = np.full((size, size, 3), grey, dtype=np.int16)
    background += noise_rng.integers(-18, 19, size=background.shape, dtype=np.int16)
    img = Image.fromarray(background.clip(0, 255).astype(np.uint8), "RGB")
    side = int(size * rng.uniform(0.35, 0.75))
    x0, y0 = rng.randint(0, size - side), rng.randint(0, size - side)
    fill = tuple(min(255, max(0, v + rng.randint(-20, 20))) for v in COLORS[color])
    _draw_outline(ImageDraw.Draw(img), shape, (x0, y0, x0 + side, y0 + side), fill)
    return img


def _draw_outline(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, ...], fill: Any) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def ensure_model(arch: TinyArch, cache_dir: Path | None = None) -> TinyClip:
    """Return the cached `arch` for the current code, training it first if needed."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache_dir / _cache_key(arch)
    if not (target / "meta.json").is_file():
        _train_into(arch, target)
    meta = json.loads((target / "meta.json").read_text())
    config_file = target / f"{arch.name}.json"
    register_config(config_file)
    return TinyClip(
        name=arch.name,
        config_file=config_file,
        checkpoint=target / f"{arch.name}-{target.name}.safetensors",
        train_seconds=meta["train_seconds"],
        eval_accuracy=meta["eval_accuracy"],
    )


def ensure_tiny_clip(cache_dir: Path | None = None) -> TinyClip:
    """Model A, the tests' and benches' model (see `ensure_model`)."""
    return ensure_model(MODEL_A, cache_dir)


_registered: set[Path] = set()


def register_config(config_file: Path) -> None:
    """Register a model-config JSON with open_clip once per process."""
    path = Path(config_file).resolve()
    if path not in _registered:
        open_clip.add_model_config(path)
        _registered.add(path)


def _cache_key(arch: TinyArch) -> str:
    source = Path(__file__).read_bytes()
    params = json.dumps([arch.name, arch.config, TRAIN_PARAMS], sort_keys=True).encode()
    return hashlib.sha256(params + source).hexdigest()[:16]


def _train_into(arch: TinyArch, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
    try:
        config_file = staging / f"{arch.name}.json"
        config_file.write_text(json.dumps(arch.config, indent=2))
        register_config(config_file)
        started = time.perf_counter()
        state, accuracy = _train_and_check(arch.name)
        seconds = time.perf_counter() - started
        # The key in the file name gives each trained version its own ClipModel.model_id.
        save_file(state, str(staging / f"{arch.name}-{target.name}.safetensors"))
        meta = {"train_seconds": round(seconds, 2), "eval_accuracy": accuracy}
        (staging / "meta.json").write_text(json.dumps(meta))
        print(f"{arch.name}: trained in {seconds:.1f}s, held-out text->image top-1 {accuracy:.3f}")
        with contextlib.suppress(OSError):  # another session finished first: same result
            staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _train_and_check(name: str) -> tuple[dict[str, torch.Tensor], float]:
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(TRAIN_PARAMS["threads"])
    try:
        torch.manual_seed(TRAIN_PARAMS["seed"])
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
        tokenizer = open_clip.get_tokenizer(name)
        _train(model, preprocess, tokenizer)
        model.eval()
        accuracy = _eval_accuracy(model, preprocess, tokenizer)
    finally:
        torch.set_num_threads(previous_threads)
    if accuracy < MIN_EVAL_ACCURACY:
        raise RuntimeError(f"{name} learned too little: held-out accuracy {accuracy:.3f}")
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    return state, accuracy


def _captions() -> tuple[list[str], list[tuple[str | None, str | None]]]:
    texts: list[str] = []
    meaning: list[tuple[str | None, str | None]] = []
    for c, s in CLASSES:
        texts += [t.format(c=c, s=s) for t in _FULL_TEMPLATES]
        meaning += [(c, s)] * len(_FULL_TEMPLATES)
    for c in COLORS:
        texts += [t.format(c=c) for t in _COLOR_TEMPLATES]
        meaning += [(c, None)] * len(_COLOR_TEMPLATES)
    for s in SHAPES:
        texts += [t.format(s=s) for t in _SHAPE_TEMPLATES]
        meaning += [(None, s)] * len(_SHAPE_TEMPLATES)
    return texts, meaning


def _image_pool(preprocess: Any) -> tuple[torch.Tensor, torch.Tensor]:
    rng = random.Random(TRAIN_PARAMS["seed"])
    tensors, labels = [], []
    for label, (c, s) in enumerate(CLASSES):
        for i in range(TRAIN_PARAMS["images_per_class"]):
            size = rng.choice((64, 96, 128, 192, 256))
            tensors.append(preprocess(draw_shape(c, s, size=size, seed=i)))
            labels.append(label)
    return torch.stack(tensors), torch.tensor(labels)


def _train(model: Any, preprocess: Any, tokenizer: Any) -> None:
    images, labels = _image_pool(preprocess)
    texts, meaning = _captions()
    tokens = tokenizer(texts)
    describes = torch.tensor([[_describes(m, cls) for m in meaning] for cls in CLASSES])
    if not TRAIN_PARAMS["train_token_embedding"]:
        # Random rows are already distinct; skipping the 49408-row table's dense gradient
        # and optimizer update makes each step several times cheaper.
        model.token_embedding.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=TRAIN_PARAMS["lr"], weight_decay=TRAIN_PARAMS["weight_decay"], fused=True
    )
    steps, batch = TRAIN_PARAMS["steps"], TRAIN_PARAMS["batch_size"]
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=TRAIN_PARAMS["lr"], total_steps=steps, pct_start=0.1
    )
    generator = torch.Generator().manual_seed(TRAIN_PARAMS["seed"])
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(labels), (batch,), generator=generator)
        cls = labels[idx]
        picks = torch.multinomial(describes[cls].float(), 1, generator=generator).squeeze(1)
        loss = _soft_clip_loss(model, images[idx], tokens[picks], describes[cls][:, picks])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100))
    model.token_embedding.requires_grad_(True)


def _describes(meaning: tuple[str | None, str | None], cls: tuple[str, str]) -> bool:
    color, shape = meaning
    return color in (None, cls[0]) and shape in (None, cls[1])


def _soft_clip_loss(
    model: Any, images: torch.Tensor, tokens: torch.Tensor, match: torch.Tensor
) -> torch.Tensor:
    """Symmetric CLIP loss whose targets are every caption that truly describes the image.

    `match[i, j]` says whether caption j describes image i; with 12 classes a batch holds
    many true pairs besides the diagonal, which plain CLIP loss would push apart.
    """
    img = model.encode_image(images, normalize=True)
    txt = model.encode_text(tokens, normalize=True)
    logits = model.logit_scale.exp() * img @ txt.T
    match = match.float()
    img_to_txt = -(match / match.sum(1, keepdim=True) * F.log_softmax(logits, 1)).sum(1)
    txt_to_img = -(match / match.sum(0, keepdim=True) * F.log_softmax(logits, 0)).sum(0)
    return (img_to_txt.mean() + txt_to_img.mean()) / 2


@torch.inference_mode()
def _eval_accuracy(model: Any, preprocess: Any, tokenizer: Any, rounds: int = 8) -> float:
    """Text->image top-1 among one held-out image per class, over a few rounds."""
    queries = tokenizer([f"a {c} {s}" for c, s in CLASSES])
    txt = model.encode_text(queries, normalize=True)
    hits = 0
    for r in range(rounds):
        batch = [
            preprocess(draw_shape(c, s, size=256, seed=EVAL_SEED_OFFSET + r)) for c, s in CLASSES
        ]
        img = model.encode_image(torch.stack(batch), normalize=True)
        hits += int((txt @ img.T).argmax(1).eq(torch.arange(len(CLASSES))).sum())
    return hits / (rounds * len(CLASSES))


def load_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The trained weights as a state dict (for tests that re-save them in other formats)."""
    return load_file(str(checkpoint))
