"""Operators' `POST /admin/reindex` (start re-embedding) and `GET /admin/reindex` (progress)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form

from deployments.deps import AUTH_ERRORS, AdminUser, Svc
from deployments.schemas import ReindexResponse
from lumen.config import ModelSettings
from lumen.embedding import model_id_for
from lumen.errors import NotFound
from lumen.storage import Stores

router = APIRouter(prefix="/admin", tags=["admin"], responses=AUTH_ERRORS)


def _report(stores: Stores, deployed: str, users: list[str] | None = None) -> dict[str, Any]:
    spaces = stores.spaces
    job = spaces.job()
    names = users if users is not None else spaces.users_with_progress()
    progress = {u: p for u in names if (p := spaces.progress(u)) is not None}
    on_other = sorted(spaces.users_on_other_models(deployed))
    return {
        "model": deployed,
        "job": None if job is None else model_id_for(ModelSettings(**job)),
        "users_on_other_models": on_other,
        "users": progress,
    }


@router.post("/reindex", response_model=ReindexResponse)
async def start_reindex(
    _: AdminUser, svc: Svc, user: Annotated[str | None, Form()] = None
) -> ReindexResponse:
    """Re-embed every space on another model than the deployed one (or only `user`'s) with
    the deployed model, in the background; the old spaces serve searches until each switch.
    Operators only (LUMEN_AUTH__ADMIN_USERS)."""
    run = svc.executors.blocking.run
    if user and not await run(svc.stores.users.exists, user):
        raise NotFound(f"no user {user!r}")
    target = svc.settings.model.model_dump(mode="json")
    await svc.actors.reembedder().start.remote(target, [user] if user else None)
    deployed = model_id_for(svc.settings.model)
    return ReindexResponse(**await run(_report, svc.stores, deployed, [user] if user else None))


@router.get("/reindex", response_model=ReindexResponse)
async def reindex_progress(_: AdminUser, svc: Svc, user: str | None = None) -> ReindexResponse:
    """The re-embedding job's target and each user's progress (state, total, done).
    Operators only (LUMEN_AUTH__ADMIN_USERS)."""
    deployed = model_id_for(svc.settings.model)
    report = await svc.executors.blocking.run(
        _report, svc.stores, deployed, [user] if user else None
    )
    return ReindexResponse(**report)
