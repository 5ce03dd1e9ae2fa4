"""A second tiny open_clip architecture (model B of the upgrade tests), trained like the first.

Other widths, depth and vector size (48) than `tests.support.tiny_clip`'s model A, trained on
the same coloured shapes with the same loss and parameters, so a space re-embedded with B
still finds "a red circle". Its own module, so A's cache key (a hash of tiny_clip.py) stays
as it is; B's key hashes both sources, its architecture and the training parameters.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import open_clip
import torch
from safetensors.torch import save_file

from tests.support import tiny_clip
from tests.support.tiny_clip import TinyClip, default_cache_dir, register_config

MODEL_NAME = "lumen-tiny-b"
MODEL_CONFIG: dict[str, Any] = {
    "embed_dim": 48,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 48, "head_width": 24, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 48, "heads": 2, "layers": 2},
}


def ensure_tiny_clip_b(cache_dir: Path | None = None) -> TinyClip:
    """The cached model B for the current code, trained first if needed (~30 s on 2 cores)."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache_dir / f"b-{_cache_key()}"
    if not (target / "meta.json").is_file():
        _train_into(target)
    meta = json.loads((target / "meta.json").read_text())
    config_file = target / f"{MODEL_NAME}.json"
    register_config(config_file)
    return TinyClip(
        name=MODEL_NAME,
        config_file=config_file,
        checkpoint=target / f"{MODEL_NAME}-{target.name}.safetensors",
        train_seconds=meta["train_seconds"],
        eval_accuracy=meta["eval_accuracy"],
    )


def _cache_key() -> str:
    sources = Path(__file__).read_bytes() + Path(tiny_clip.__file__).read_bytes()
    params = json.dumps([MODEL_CONFIG, tiny_clip.TRAIN_PARAMS], sort_keys=True).encode()
    return hashlib.sha256(params + sources).hexdigest()[:16]


def _train_into(target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
    try:
        config_file = staging / f"{MODEL_NAME}.json"
        config_file.write_text(json.dumps(MODEL_CONFIG, indent=2))
        register_config(config_file)
        started = time.perf_counter()
        state, accuracy = _train_and_check()
        seconds = time.perf_counter() - started
        save_file(state, str(staging / f"{MODEL_NAME}-{target.name}.safetensors"))
        meta = {"train_seconds": round(seconds, 2), "eval_accuracy": accuracy}
        (staging / "meta.json").write_text(json.dumps(meta))
        print(f"tiny_clip_b: trained in {seconds:.1f}s, held-out text->image top-1 {accuracy:.3f}")
        with contextlib.suppress(OSError):  # another session finished first: same result
            staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _train_and_check() -> tuple[dict[str, torch.Tensor], float]:
    params = tiny_clip.TRAIN_PARAMS
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(params["threads"])
    try:
        torch.manual_seed(params["seed"])
        model, _, preprocess = open_clip.create_model_and_transforms(MODEL_NAME, pretrained=None)
        tokenizer = open_clip.get_tokenizer(MODEL_NAME)
        tiny_clip._train(model, preprocess, tokenizer)
        model.eval()
        accuracy = tiny_clip._eval_accuracy(model, preprocess, tokenizer)
    finally:
        torch.set_num_threads(previous_threads)
    if accuracy < tiny_clip.MIN_EVAL_ACCURACY:
        raise RuntimeError(f"tiny_clip_b learned too little: held-out accuracy {accuracy:.3f}")
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    return state, accuracy
