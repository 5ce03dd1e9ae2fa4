"""Model upgrades, the decisions: which space a vector goes to, what is left, when to start."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lumen.config import ReindexSettings
from lumen.errors import ModelMismatch
from lumen.reembed import fit_square, pool_size
from lumen.storage.vectors import IndexInfo
from lumen.upgrade import (
    Rows,
    Vectors,
    commit_versions,
    commit_versions_many,
    needs_reembedding,
    remaining,
    upgrade_pending,
)


@dataclass
class FakeActive:
    """The active space: holds one model; a commit of another is refused (as the script)."""

    model: str | None
    committed: list[tuple[str, list[str]]] = field(default_factory=list)
    rows: Rows = field(default_factory=list)  # every row committed, as given
    switch_before_commit: str | None = None  # the switch happens between read and commit

    def info(self, user: str) -> IndexInfo | None:
        info = None if self.model is None else IndexInfo(self.model, 4)
        if self.switch_before_commit is not None:
            self.model = self.switch_before_commit
        return info

    def commit(self, user: str, model_id: str, dim: int, rows: Rows) -> dict[str, int]:
        if self.model is not None and self.model != model_id:
            raise ModelMismatch(f"space holds {self.model}")
        self.model = model_id
        self.committed.append((model_id, [r[0] for r in rows]))
        self.rows += rows
        return {r[0]: i for i, r in enumerate(rows, 1)}

    def infos(self, users: Sequence[str]) -> list[IndexInfo | None]:
        return [self.info(user) for user in users]

    def commit_many(
        self, requests: Sequence[tuple[str, str, int, Rows]]
    ) -> list[dict[str, int] | ModelMismatch]:
        out: list[dict[str, int] | ModelMismatch] = []
        for user, model_id, dim, rows in requests:
            try:
                out.append(self.commit(user, model_id, dim, rows))
            except ModelMismatch as exc:
                out.append(exc)
        return out


@dataclass
class FakeNext:
    written: list[tuple[str, list[str]]] = field(default_factory=list)

    def write(self, user: str, model_id: str, dim: int, rows: Rows) -> dict[str, int]:
        self.written.append((model_id, [r[0] for r in rows]))
        return {}


ROWS: Rows = [("uploads/u/a.jpg", b"\0" * 16, "")]
B = Vectors("model-b", 4, ROWS)
A = Vectors("model-a", 4, ROWS)


def test_a_user_on_the_previous_model_gets_both_vectors_one_per_space() -> None:
    active, nxt = FakeActive("model-a"), FakeNext()
    used, _ = commit_versions(active, nxt, "u", B, A)
    assert used is A
    assert active.committed == [("model-a", ["uploads/u/a.jpg"])]
    assert nxt.written == [("model-b", ["uploads/u/a.jpg"])]


def test_a_user_on_the_deployed_model_or_new_gets_the_deployed_vectors_only() -> None:
    for model in ("model-b", None):
        active, nxt = FakeActive(model), FakeNext()
        used, _ = commit_versions(active, nxt, "u", B, A)
        assert used is B and nxt.written == []
        assert active.committed == [("model-b", ["uploads/u/a.jpg"])]


def test_a_commit_that_meets_the_switch_commits_the_deployed_models_vectors() -> None:
    active, nxt = FakeActive("model-a", switch_before_commit="model-b"), FakeNext()
    used, committed = commit_versions(active, nxt, "u", B, A)
    assert used is B and committed == {"uploads/u/a.jpg": 1}


def test_a_photos_ocr_words_are_committed_with_whichever_version_the_active_space_takes() -> None:
    """The words belong to the item: the previous model's rows carry them during an upgrade,
    and the deployed model's when the commit meets the switch."""
    read: Rows = [("uploads/u/a.jpg", b"\0" * 16, "", "EXIT 12", "")]
    for switch in (None, "model-b"):
        active = FakeActive("model-a", switch_before_commit=switch)
        commit_versions(
            active, FakeNext(), "u", Vectors("model-b", 4, read), Vectors("model-a", 4, read)
        )
        assert [r[3:] for r in active.rows] == [("EXIT 12", "")]


def test_a_space_of_a_model_neither_vector_is_of_is_refused() -> None:
    with pytest.raises(ModelMismatch):
        commit_versions(FakeActive("model-z"), FakeNext(), "u", B, None)


def test_what_remains_is_every_done_item_not_yet_in_the_next_space_in_order() -> None:
    assert remaining(["a", "b", "c", "d"], {"b", "d", "zz"}) == ["a", "c"]
    assert remaining([], {"a"}) == []


def test_only_a_space_on_another_model_needs_reembedding() -> None:
    assert needs_reembedding(IndexInfo("a", 4), "b")
    assert not needs_reembedding(IndexInfo("b", 4), "b")
    assert not needs_reembedding(None, "b")


@dataclass
class FakeState:
    recorded: dict[str, object] | None
    on_other: list[str]

    def job(self) -> dict[str, object] | None:
        return self.recorded

    def users_on_other_models(self, model_id: str) -> list[str]:
        return self.on_other


def test_nothing_starts_unless_a_job_is_recorded_or_a_space_is_on_another_model() -> None:
    assert not upgrade_pending(FakeState(None, []), "b")
    assert upgrade_pending(FakeState(None, ["al"]), "b")
    assert upgrade_pending(FakeState({"name": "b"}, []), "b")  # a job a crash interrupted


def test_the_pool_takes_its_share_of_the_cpus_and_at_least_one_actor() -> None:
    assert pool_size(ReindexSettings(share=0.25), 4) == 1
    assert pool_size(ReindexSettings(share=0.5), 16) == 8
    assert pool_size(ReindexSettings(share=0.5, cpus_per_actor=2), 16) == 4
    assert pool_size(ReindexSettings(share=0.1), 2) == 1


def test_decoded_pixels_are_the_models_square_crop() -> None:
    img = Image.new("RGB", (300, 100), (255, 0, 0))
    px = fit_square(img, 32)
    assert px.shape == (32, 32, 3) and px.dtype == np.uint8
    assert (px[..., 0] > 250).all()


def test_the_pipelines_stages_give_the_models_own_vectors(tmp_path: Path) -> None:
    """read + decode, then the pool's model: the vector the Embedder would make, and a file
    that cannot be read is marked, not fatal."""
    from lumen.embedding import ClipModel
    from lumen.reembed import ModelPool, ReadDecode, model_side
    from tests.support.tiny_clip import draw_shape, ensure_tiny_clip

    model = ensure_tiny_clip().model_settings()
    folder = tmp_path / "uploads" / "al"
    folder.mkdir(parents=True)
    draw_shape("red", "circle", size=96, seed=1).save(folder / "a.png")
    side = model_side(model)
    decode = ReadDecode(str(tmp_path), "al", side, 10_000_000)
    batch = decode({"item": np.array(["uploads/al/a.png", "uploads/al/gone.png"], dtype=object)})
    assert batch["pixels"].shape == (2, side, side, 3) and list(batch["ok"]) == [True, False]
    out = ModelPool(model.model_dump(mode="json"))(batch)
    clip = ClipModel.from_settings(model)
    direct = clip.encode_images([Image.open(folder / "a.png")])[0]
    assert out["vector"].shape[1] == clip.dim
    assert float(out["vector"][0] @ direct) > 0.98  # the same image, resized once more


def test_many_users_are_each_answered_on_their_own_in_one_batch() -> None:
    """One user on the previous model (both versions), one new, one on a third model."""

    @dataclass
    class PerUser:
        models: dict[str, str]
        batches: int = 0

        def infos(self, users: Sequence[str]) -> list[IndexInfo | None]:
            return [IndexInfo(self.models[u], 4) if u in self.models else None for u in users]

        def commit(self, user: str, model_id: str, dim: int, rows: Rows) -> dict[str, int]:
            if self.models.setdefault(user, model_id) != model_id:
                raise ModelMismatch(f"space holds {self.models[user]}")
            return {r[0]: 1 for r in rows}

        def commit_many(
            self, requests: Sequence[tuple[str, str, int, Rows]]
        ) -> list[dict[str, int] | ModelMismatch]:
            self.batches += 1
            return FakeActive.commit_many(self, requests)  # type: ignore[arg-type]

    active, nxt = PerUser({"old": "model-a", "odd": "model-z"}), FakeNext()
    out = commit_versions_many(active, nxt, [("old", B, A), ("new", B, A), ("odd", B, None)])
    assert active.batches == 1
    assert out[0] == (A, {"uploads/u/a.jpg": 1}) and out[1] == (B, {"uploads/u/a.jpg": 1})
    assert isinstance(out[2], ModelMismatch)
    assert nxt.written == [("model-b", ["uploads/u/a.jpg"])]  # the user on model-a only
