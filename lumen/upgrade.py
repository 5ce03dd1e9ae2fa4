"""Model upgrades, the decisions: which space a fresh vector goes to, who needs re-embedding.

A user's active space holds one model (`vinfo.model`). After a deploy of model B, users on A
keep searching their A space (queries encoded with A) while a re-embedding fills a NEXT space
with B; an item uploaded meanwhile is embedded with both and lands in both spaces, so it is
searchable before, during and after the switch (docs/models.md, "Upgrading the model").
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from lumen.errors import ModelMismatch
from lumen.storage.vectors import IndexInfo
from lumen.vectors import CommitRow

log = logging.getLogger(__name__)

# (item, vector bytes, caption[, OCR words, OCR note]): the words OCR read are the item's, not
# a model's; the active space's commit stores them (ocr:{u}), which no switch or dropped
# space touches, so they stay searchable before, during and after an upgrade.
Rows = list[CommitRow]


@dataclass(frozen=True)
class Vectors:
    """One model's vectors for a batch of items."""

    model: str
    dim: int
    rows: Rows


class ActiveSpace(Protocol):
    def infos(self, users: Sequence[str]) -> list[IndexInfo | None]: ...
    def commit(self, user: str, model_id: str, dim: int, rows: Rows) -> dict[str, int]: ...
    def commit_many(
        self, requests: Sequence[tuple[str, str, int, Rows]]
    ) -> list[dict[str, int] | ModelMismatch]: ...


class NextSpace(Protocol):
    def write(self, user: str, model_id: str, dim: int, rows: Rows) -> dict[str, int]: ...


# One user's vectors to commit: (user, the deployed model's, a previous model's or None).
Batch = Sequence[tuple[str, Vectors, Vectors | None]]
Committed = tuple[Vectors, dict[str, int]]  # the version committed and item -> id


def commit_versions(
    active: ActiveSpace, nxt: NextSpace, user: str, deployed: Vectors, previous: Vectors | None
) -> Committed:
    """Commit items that have the deployed model's vectors (and maybe a previous model's).

    The version matching the user's active space is committed (items -> done); while that
    is a previous model, the deployed model's vectors go to the NEXT space first. If the
    switch happens between the two reads, the commit is refused and the deployed model's
    vectors, now the active model's, are committed instead. Returns what was committed.
    """
    [answer] = commit_versions_many(active, nxt, [(user, deployed, previous)])
    if isinstance(answer, ModelMismatch):
        raise answer
    return answer


def commit_versions_many(
    active: ActiveSpace, nxt: NextSpace, batch: Batch
) -> list[Committed | ModelMismatch]:
    """`commit_versions` for several users, each answered on its own (a `ModelMismatch`
    where `commit_versions` would raise one): the spaces' models read in one round trip and
    the commits sent together (`commit_many`)."""
    infos = active.infos([user for user, _, _ in batch])
    primaries: list[Vectors] = []
    for (user, deployed, previous), info in zip(batch, infos, strict=True):
        primary = deployed
        if previous is not None and info is not None and info.model == previous.model:
            primary = previous
            try:
                nxt.write(user, deployed.model, deployed.dim, deployed.rows)
            except ModelMismatch:  # a NEXT space of another model: its re-embedding replaces it
                log.warning("NEXT space of %s holds another model; left to the re-embedding", user)
        primaries.append(primary)
    answers = active.commit_many(
        [(user, p.model, p.dim, p.rows) for (user, _, _), p in zip(batch, primaries, strict=True)]
    )
    out: list[Committed | ModelMismatch] = []
    for (user, deployed, _), primary, answer in zip(batch, primaries, answers, strict=True):
        if not isinstance(answer, ModelMismatch):
            out.append((primary, answer))
        elif primary is deployed:
            out.append(answer)
        else:  # switched between the read and the commit: the deployed model is active now
            try:
                out.append(
                    (deployed, active.commit(user, deployed.model, deployed.dim, deployed.rows))
                )
            except ModelMismatch as exc:
                out.append(exc)
    return out


def needs_reembedding(info: IndexInfo | None, deployed_model: str) -> bool:
    """A user's space must be re-embedded when it holds another model than the deployed one."""
    return info is not None and info.model != deployed_model


class UpgradeState(Protocol):
    def job(self) -> dict[str, object] | None: ...
    def users_on_other_models(self, model_id: str) -> Iterable[str]: ...


def upgrade_pending(spaces: UpgradeState, deployed_model: str) -> bool:
    """Whether a re-embedding job must run: one is recorded unfinished, or some user's space
    holds another model than the deployed one. False means starting nothing at all."""
    if spaces.job() is not None:
        return True
    return next(iter(spaces.users_on_other_models(deployed_model)), None) is not None


def remaining(done: Iterable[str], in_next: set[str]) -> list[str]:
    """Done items without a vector in the NEXT space, in the order given (oldest first)."""
    return [item for item in done if item not in in_next]
