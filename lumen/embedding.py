"""The open_clip model behind the Embedder: loading it from settings, images/texts to vectors.

Framework-free (no Ray): a `ClipModel` owns one open_clip model, its eval transform and its
tokenizer. Every vector it returns is float32 and L2-normalised, so a dot product is a
cosine similarity.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image

from lumen.config import ModelSettings
from lumen.models import (
    read_staged,
    staged_hf_folders,
    staged_hf_options,
    staged_load_options,
    staged_tokenizer,
)

_registered_configs: set[Path] = set()


class ClipModel:
    """One loaded open_clip model with its preprocessing and tokenizer, ready for inference."""

    def __init__(
        self,
        model: torch.nn.Module,
        preprocess: Callable[[Image.Image], torch.Tensor],
        tokenizer: Callable[[Sequence[str]], torch.Tensor],
        *,
        name: str,
        model_id: str,
        device: str,
    ) -> None:
        # Any: open_clip's towers are reached through nn.Module attributes mypy cannot see.
        self._model: Any = model.eval()
        self._preprocess = preprocess
        self._tokenizer = tokenizer
        self._name = name
        self._model_id = model_id
        self._device = device
        self._dtype = next(model.parameters()).dtype
        self._dim = int(self.encode_texts([""]).shape[1])

    @classmethod
    def from_settings(
        cls, model: ModelSettings, device: str | None = None, threads: int | None = None
    ) -> ClipModel:
        """Build the model `model` describes on `device` (default: cuda if available, else cpu)."""
        if threads is not None:
            torch.set_num_threads(threads)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if model.config_file:
            register_model_config(Path(model.config_file), model.name)
        weights = resolve_weights(model)
        precision = "fp16" if device.startswith("cuda") and model.fp16_on_gpu else "fp32"
        staged = not model.checkpoint and model.staged_dir and model.pretrained
        options = staged_load_options(model) if staged else {}
        # Staged weights: the tokenizer and text config files come from the staged folder too.
        hf_folders = staged_hf_folders(model)
        options.update(staged_hf_options(model, hf_folders))
        try:
            net, _, preprocess = open_clip.create_model_and_transforms(
                model.name,
                pretrained=weights,
                precision=precision,
                device=device,
                cache_dir=model.cache_dir,
                **options,
            )
        except RuntimeError as exc:
            raise RuntimeError(
                f"could not load model {model.name!r} with weights {weights!r}: {exc}"
            ) from exc
        tokenizer = staged_tokenizer(model, hf_folders)
        return cls(
            net, preprocess, tokenizer, name=model.name, model_id=model_id_for(model), device=device
        )

    @property
    def name(self) -> str:
        return self._name

    @property
    def model_id(self) -> str:
        """`<architecture>:<weights>`; an index built with one id refuses vectors from another."""
        return self._model_id

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def image_size(self) -> int:
        """Side in pixels of the square input the model sees (the larger side if not square)."""
        size: Any = open_clip.get_model_preprocess_cfg(self._model).get("size")
        if size is None:
            size = self._model.visual.image_size
        return int(size) if isinstance(size, int) else int(max(size))

    @property
    def device(self) -> str:
        return self._device

    def preprocess_image(self, img: Image.Image) -> torch.Tensor:
        """The model's eval transform of one image: a [3, H, W] float tensor on the CPU."""
        if img.mode != "RGB":
            img = img.convert("RGB")
        return self._preprocess(img)

    def encode_image_tensors(self, batch: torch.Tensor) -> np.ndarray:
        """Embed a preprocessed [n, 3, H, W] batch into float32 unit vectors [n, dim]."""
        if batch.ndim != 4:
            raise ValueError(f"expected a [n, 3, H, W] batch, got shape {tuple(batch.shape)}")
        if batch.shape[0] == 0:
            return np.empty((0, self._dim), dtype=np.float32)
        with torch.inference_mode():
            features = self._model.encode_image(batch.to(self._device, self._dtype))
            return _unit_rows(features)

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Preprocess and embed PIL images into float32 unit vectors [n, dim]."""
        if not images:
            return np.empty((0, self._dim), dtype=np.float32)
        return self.encode_image_tensors(torch.stack([self.preprocess_image(i) for i in images]))

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts into float32 unit vectors [n, dim] (long texts are truncated)."""
        if not texts:
            return np.empty((0, self._dim), dtype=np.float32)
        tokens = self._tokenizer(list(texts)).to(self._device)
        with torch.inference_mode():
            return _unit_rows(self._model.encode_text(tokens))


def _unit_rows(features: torch.Tensor) -> np.ndarray:
    # Normalise in float32: fp16 rounding would leave norms visibly off 1.
    unit = F.normalize(features.float(), dim=-1)
    return np.ascontiguousarray(unit.cpu().numpy(), dtype=np.float32)


def register_model_config(config_file: Path, name: str) -> None:
    """Register a custom architecture with open_clip; the file's stem must be `name`."""
    path = config_file.expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"model config file not found: {path} (LUMEN_MODEL__CONFIG_FILE)")
    if path.stem != name:
        raise ValueError(
            f"model config file {path.name} defines architecture {path.stem!r},"
            f" but the model name is {name!r}; name the file {name}.json"
        )
    if path not in _registered_configs:
        open_clip.add_model_config(path)
        _registered_configs.add(path)


def resolve_weights(model: ModelSettings) -> str | None:
    """What to pass open_clip as `pretrained`: a checked local file path, a tag, or None.

    With `staged_dir` and a tag, the staged file (size and sha256 checked) is that path;
    missing or corrupt staged weights are refused, never fetched from the hub instead.

    open_clip loads a local file itself (`.safetensors`, or a `.pt`/`.pth` holding a state
    dict or `{"state_dict": ...}`, with `weights_only=True`), so a path is passed through.
    """
    if model.checkpoint:
        path = Path(model.checkpoint).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(
                f"model checkpoint not found: {path} (set LUMEN_MODEL__CHECKPOINT to an existing"
                " .pt or .safetensors file, or unset it to use LUMEN_MODEL__PRETRAINED)"
            )
        return str(path)
    if model.staged_dir and model.pretrained:
        return str(read_staged(model.staged_dir, model.name, model.pretrained).file.resolve())
    return model.pretrained


def model_id_for(model: ModelSettings) -> str:
    """`<name>:<checkpoint file name | pretrained tag | random>`."""
    weights = Path(model.checkpoint).name if model.checkpoint else model.pretrained or "random"
    return f"{model.name}:{weights}"
