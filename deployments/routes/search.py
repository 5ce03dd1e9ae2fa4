"""`POST /search` (text and/or image), `POST /search/pdf` and `GET /image/{path}`."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

import numpy as np
from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import Response

from actors import metrics
from deployments.deps import AUTH_ERRORS, CurrentUser, StreamUser, Svc
from lumen.errors import BadRequest, LimitExceeded, NotFound
from lumen.ingest.images import to_browser_bytes
from lumen.paths import resolve_item
from lumen.vectors import normalize

router = APIRouter(tags=["search"], responses=AUTH_ERRORS)


def parse_top_k(raw: str | None, default: int, maximum: int) -> int:
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"top_k must be an integer between 1 and {maximum}") from None
    if not 1 <= value <= maximum:
        raise BadRequest(f"top_k must be between 1 and {maximum}")
    return value


def clean_query(raw: str | None, max_chars: int) -> str | None:
    if raw is None or not raw.strip():
        return None
    if len(raw) > max_chars:
        raise LimitExceeded(f"query is longer than {max_chars} characters", "max_query_chars")
    return raw.strip()


async def _read_query_image(image: UploadFile | None, max_bytes: int) -> bytes | None:
    if image is None or not image.filename and image.size in (None, 0):
        return None
    data = await image.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise LimitExceeded(f"image is larger than {max_bytes} bytes", "max_search_image_bytes")
    if not data:
        raise BadRequest("the query image is empty")
    return data


@router.post("/search")
async def search(
    user: CurrentUser,
    svc: Svc,
    query: Annotated[str | None, Form()] = None,
    image: Annotated[UploadFile | None, File()] = None,
    top_k: Annotated[str | None, Form()] = None,
) -> dict[str, object]:
    """Find the caller's most similar images to a text, an image, or both (vectors averaged)."""
    started = time.perf_counter()
    limits = svc.settings.limits
    k = parse_top_k(top_k, 5, limits.max_top_k)
    text = clean_query(query, limits.max_query_chars)
    data = await _read_query_image(image, limits.max_search_image_bytes)
    if text is None and data is None:
        raise BadRequest("give a text `query`, an `image`, or both")
    vectors = []
    if text is not None:
        vectors.append(await svc.embed_text(text))
    if data is not None:
        vectors.append(await svc.embed_image(data))
    qvec = normalize(np.mean(np.stack(vectors), axis=0, keepdims=True))[0].astype("<f4")
    hits = await svc.shard(user).search.remote(user, qvec.tobytes(), k)
    metrics.search_seconds().observe(time.perf_counter() - started, tags={"route": "/search"})
    return {
        "results": [
            {
                "filename": h.item,
                "caption": h.caption,
                "similarity": round(h.similarity, 6),
                "image_path": f"/data/{h.item}",
                "image_url": f"/image/{h.item}",
            }
            for h in hits
        ]
    }


@router.post("/search/pdf")
async def search_pdf(
    user: CurrentUser,
    svc: Svc,
    query: Annotated[str | None, Form()] = None,
    top_k: Annotated[str | None, Form()] = None,
    mode: Annotated[str, Form(description="fused (default), text or image")] = "fused",
) -> dict[str, object]:
    """Find the best page of the caller's PDFs (CLIP + page text) and ask Gemini about it."""
    started = time.perf_counter()
    limits = svc.settings.limits
    k = parse_top_k(top_k, 1, limits.max_top_k)
    if mode not in ("fused", "text", "image"):
        raise BadRequest("mode must be one of: fused, text, image")
    text = clean_query(query, limits.max_query_chars)
    if text is None:
        raise BadRequest("`query` is required")
    qvec = await svc.embed_text(text)
    qbytes = qvec.astype("<f4").tobytes()
    hits = await svc.shard(user).search_pdf.remote(user, qbytes, text, k, mode)
    if not hits:
        return {
            "query": text,
            "top_result": None,
            "gemini_answer": None,
            "message": "No PDF pages indexed yet: upload a PDF with POST /upload/pdf.",
            "results": [],
        }
    metas = await asyncio.to_thread(svc.stores.queue.meta, user, [h.item for h in hits])
    results = [
        {
            "filename": h.item,
            "similarity": round(h.similarity, 6),
            "image_url": f"/image/{h.item}",
            "doc": (m or {}).get("doc"),
            "page": (m or {}).get("page"),
            "text_score": h.text_score,
            "score": h.fused,
        }
        for h, m in zip(hits, metas, strict=True)
    ]
    metrics.search_seconds().observe(time.perf_counter() - started, tags={"route": "/search/pdf"})
    top = hits[0]
    page_path = resolve_item(svc.settings.data_dir, user, top.item)
    page_text = await asyncio.to_thread(svc.stores.queue.pdf_text, user, top.item)
    image_bytes = await asyncio.to_thread(page_path.read_bytes)
    answer = await asyncio.to_thread(
        svc.answerer.answer, text, image_bytes, "image/jpeg", page_text
    )
    return {
        "query": text,
        "top_result": results[0],
        "gemini_answer": answer.text,
        "gemini_reason": answer.reason,
        "results": results,
    }


@router.get("/image/{path:path}", responses={404: {"description": "Image not found"}})
async def image(path: str, user: StreamUser, svc: Svc) -> Response:
    """One of the caller's own images (HEIC converted to JPEG). Auth: header or `?token=`."""
    file = resolve_item(svc.settings.data_dir, user, path)
    if not file.is_file():
        raise NotFound("Image not found")
    try:
        data, mime = await asyncio.to_thread(
            to_browser_bytes, file, svc.settings.limits.max_image_pixels
        )
    except Exception:  # noqa: BLE001 - unreadable: as good as missing to the caller
        raise NotFound("Image not found") from None
    return Response(
        content=data, media_type=mime, headers={"Cache-Control": "private, max-age=3600"}
    )
