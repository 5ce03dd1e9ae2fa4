"""`GET /readyz`: readiness, apart from liveness (`/healthz`); no token needed."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from deployments.deps import Svc

router = APIRouter(tags=["system"])


@router.get("/readyz")
async def readyz(svc: Svc) -> JSONResponse:
    """Whether work would get done: 200 when ready, else 503 with `reasons`.

    Names the Embedder's running replicas, the dispatchers and index shards that answer, and
    Redis. An Embedder scaled to zero is ready (a replica starts when work arrives); one whose
    replicas cannot start, or that has none running yet, is not.
    """
    readiness = await svc.readiness.check()
    headers = {} if readiness.ready else {"Retry-After": "5"}
    return JSONResponse(
        readiness.body(), status_code=200 if readiness.ready else 503, headers=headers
    )
