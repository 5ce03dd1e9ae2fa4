"""Re-embedding a user's done items with the deployed model: a Ray Data pipeline.

    items still missing from the NEXT space (Redis) -> ray.data.from_items
      -> map_batches(read + decode, CPU tasks)       files to fixed-size RGB arrays
      -> map_batches(ModelPool, an actor pool)        the deployed model on each actor
      -> SpaceStore.write (WRITE_SPACE, idempotent by item) -> SpaceStore.switch

Resumable: what is left is recomputed from the NEXT space each time, so a crash, a killed
driver or a `ray stop` loses nothing and writes nothing twice. Throttled: the pool holds
`reindex.share` of the cluster's CPUs at most, the job pauses while live uploads wait, and
the pool is released when the user's pipeline ends.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from lumen.config import ModelSettings, ReindexSettings, Settings
from lumen.embedding import model_id_for
from lumen.ingest.images import open_image
from lumen.paths import resolve_item
from lumen.storage import Stores
from lumen.storage.reindex import FAILED, PENDING, RUNNING, SWITCHED
from lumen.upgrade import needs_reembedding

log = logging.getLogger(__name__)

SWITCH_ROUNDS = 5  # re-embed what was committed with the old model alone, then switch again


def fit_square(img: Image.Image, side: int) -> np.ndarray:
    """The image as the model's eval transform sees it: short side to `side`, centre crop."""
    w, h = img.size
    scale = side / min(w, h)
    img = img.resize(
        (max(side, round(w * scale)), max(side, round(h * scale))), Image.Resampling.BICUBIC
    )
    w, h = img.size
    left, top = (w - side) // 2, (h - side) // 2
    return np.asarray(img.crop((left, top, left + side, top + side)).convert("RGB"))


def model_side(model: ModelSettings) -> int:
    """The model's input side in pixels, from its open_clip config (224 if unknown)."""
    import open_clip

    from lumen.embedding import register_model_config

    if model.config_file:
        from pathlib import Path

        register_model_config(Path(model.config_file), model.name)
    cfg = open_clip.get_model_config(model.name) or {}
    size = cfg.get("vision_cfg", {}).get("image_size", 224)
    return int(size if isinstance(size, int) else max(size))


@dataclass(frozen=True)
class ReadDecode:
    """Ray Data stage 1 (CPU tasks): a batch of item names to pixels of the model's size."""

    data_dir: str
    user: str
    side: int
    max_pixels: int

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from pathlib import Path

        pixels, ok = [], []
        for item in batch["item"]:
            try:
                path = resolve_item(Path(self.data_dir), self.user, str(item))
                img = open_image(path, max_pixels=self.max_pixels, draft_size=(self.side,) * 2)
                pixels.append(fit_square(img, self.side))
                ok.append(True)
            except Exception:  # noqa: BLE001 - a vanished or broken file: left out, logged
                log.warning("re-embedding cannot read %s of %s", item, self.user)
                pixels.append(np.zeros((self.side, self.side, 3), np.uint8))
                ok.append(False)
        return {"item": batch["item"], "pixels": np.stack(pixels), "ok": np.array(ok)}


class ModelPool:
    """Ray Data stage 2 (an actor pool): each actor loads the deployed model once."""

    def __init__(self, model: dict[str, Any]) -> None:
        import torch

        from lumen.embedding import ClipModel

        self.torch = torch
        self.model = ClipModel.from_settings(ModelSettings(**model), threads=1)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tensors = [self.model.preprocess_image(Image.fromarray(px)) for px in batch["pixels"]]
        vectors = self.model.encode_image_tensors(self.torch.stack(tensors))
        return {"item": batch["item"], "vector": vectors, "ok": batch["ok"]}


def pool_size(settings: ReindexSettings, cluster_cpus: float) -> int:
    """Actors in the pool: `share` of the cluster's CPUs, at least one."""
    return max(1, math.floor(settings.share * cluster_cpus / settings.cpus_per_actor))


class Reembedding:
    """Re-embeds users' spaces into the target model and switches them, one user at a time.

    `should_stop` is polled between batches (the driver actor's stop flag).
    """

    def __init__(
        self,
        settings: Settings,
        stores: Stores,
        target: ModelSettings,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.settings = settings
        self.stores = stores
        self.target = target
        self.target_id = model_id_for(target)
        self.should_stop = should_stop

    def users(self) -> list[str]:
        """Users whose active space holds another model than the target."""
        return sorted(self.stores.spaces.users_on_other_models(self.target_id))

    def run_user(self, user: str) -> bool:
        """Re-embed and switch one user; True when the user's space now holds the target."""
        spaces = self.stores.spaces
        if not needs_reembedding(self.stores.vectors.info(user), self.target_id):
            return True
        nxt = spaces.info(user)
        if nxt is not None and nxt.model != self.target_id:  # a NEXT space of an older target
            spaces.drop(user)
        try:
            for _ in range(SWITCH_ROUNDS):
                left = spaces.remaining(user)
                total = len(spaces.done_items(user))
                spaces.set_progress(
                    user, state=RUNNING, model=self.target_id, total=total, done=total - len(left)
                )
                if left and not self._embed(user, left, total):
                    return False  # stopped: resumes later from what NEXT holds
                result = spaces.switch(user, self.target_id, self.settings.reindex.keep_old_space)
                if result.switched or result.reason == "no_space" and total == 0:
                    spaces.set_progress(user, state=SWITCHED, total=total, done=total)
                    log.info("switched %s to %s (%d vectors)", user, self.target_id, total)
                    return True
            raise RuntimeError(f"{user}'s space kept gaining items re-embedded with no vector")
        except Exception as exc:
            spaces.set_progress(user, state=FAILED, error=str(exc)[:300])
            raise

    def _embed(self, user: str, items: list[str], total: int) -> bool:
        import ray

        rx = self.settings.reindex
        cpus = float(ray.cluster_resources().get("CPU", 1))
        actors = pool_size(rx, cpus)
        side = model_side(self.target)
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.resource_limits = ctx.execution_options.resource_limits.copy(
            cpu=actors * rx.cpus_per_actor + 1
        )
        ctx.enable_progress_bars = False
        decode = ReadDecode(
            str(self.settings.data_dir), user, side, self.settings.limits.max_image_pixels
        )
        ds = (
            ray.data.from_items([{"item": item} for item in items])
            .map_batches(decode, batch_size=rx.batch_size, num_cpus=0.5)
            .map_batches(
                ModelPool,
                fn_constructor_kwargs={"model": self.target.model_dump(mode="json")},
                batch_size=rx.batch_size,
                compute=ray.data.ActorPoolStrategy(size=actors),
                num_cpus=rx.cpus_per_actor,
            )
        )
        done = total - len(items)
        for batch in ds.iter_batches(batch_size=rx.batch_size, batch_format="numpy"):
            rows = [
                (str(item), np.asarray(vec, dtype="<f4").tobytes(), "")
                for item, vec, ok in zip(batch["item"], batch["vector"], batch["ok"], strict=True)
                if ok
            ]
            if rows:
                dim = len(rows[0][1]) // 4
                self.stores.spaces.write(user, self.target_id, dim, rows)
            done += len(batch["item"])
            self.stores.spaces.set_progress(user, done=done)
            if self.should_stop():
                return False
            self._throttle()
        return True

    def _throttle(self) -> None:
        """Pause while live uploads wait (they keep priority), and `batch_pause_s` anyway."""
        rx = self.settings.reindex
        if rx.batch_pause_s:
            time.sleep(rx.batch_pause_s)
        while self.stores.queue.depth()["queued"] >= rx.pause_backlog_items:
            if self.should_stop():
                return
            time.sleep(0.5)

    def mark_pending(self, users: list[str]) -> None:
        for user in users:
            if (self.stores.spaces.progress(user) or {}).get("state") not in (RUNNING,):
                self.stores.spaces.set_progress(user, state=PENDING, model=self.target_id)
