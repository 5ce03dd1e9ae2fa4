"""`POST /search` (text and/or image), `POST /search/pdf` and `GET /image/{path}`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import Response

from deployments.deps import AUTH_ERRORS, CurrentUser, MaybeBearer, Svc, get_current_user
from deployments.schemas import PageResult, PdfSearchResponse, SearchResponse, SearchResult
from lumen.admission import Work
from lumen.errors import BadRequest, LimitExceeded, NotFound
from lumen.ingest.images import to_browser_bytes
from lumen.paths import resolve_item
from lumen.search import PageResult as PdfPage
from lumen.search import Spans, clean_query, parse_mode, parse_top_k

router = APIRouter(tags=["search"], responses=AUTH_ERRORS)

NO_PAGES = "No PDF pages indexed yet: upload a PDF with POST /upload/pdf."


async def _read_query_image(image: UploadFile | None, max_bytes: int) -> bytes | None:
    if image is None or not image.filename and image.size in (None, 0):
        return None
    data = await image.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise LimitExceeded(f"image is larger than {max_bytes} bytes", "max_search_image_bytes")
    if not data:
        raise BadRequest("the query image is empty")
    return data


@router.post("/search", response_model=SearchResponse)
async def search(
    user: CurrentUser,
    svc: Svc,
    query: Annotated[str | None, Form()] = None,
    image: Annotated[UploadFile | None, File()] = None,
    top_k: Annotated[str | None, Form()] = None,
    *,
    response: Response,
) -> SearchResponse:
    """Find the caller's most similar images to a text, an image, or both (vectors averaged).

    A text query also matches the words OCR read in photos, fused with CLIP similarity into
    one ranking; each result's `matched` says why it is there, `matched_words` which words.

    The `Server-Timing` header gives the wall time of the encode (`embed`) and the index
    lookup (`index`) in ms.
    """
    limits = svc.settings.limits
    k = parse_top_k(top_k, 5, limits.max_top_k)
    text = clean_query(query, limits.max_query_chars)
    data = await _read_query_image(image, limits.max_search_image_bytes)
    spans = Spans()
    hits = await svc.search.images(user, text, data, k, spans)
    response.headers["Server-Timing"] = spans.header()
    ttl = svc.settings.auth.image_link_ttl_s
    return SearchResponse(
        results=[
            SearchResult(
                filename=h.item,
                caption=h.caption,
                similarity=h.similarity,
                image_path=f"/data/{h.item}",
                image_url=svc.links.sign(user, h.item, ttl),
                matched=list(h.matched),
                matched_words=list(h.words),
            )  # fmt: skip
            for h in hits
        ]
    )


@router.post("/search/pdf", response_model=PdfSearchResponse)
async def search_pdf(
    user: CurrentUser,
    svc: Svc,
    query: Annotated[str | None, Form()] = None,
    top_k: Annotated[str | None, Form()] = None,
    mode: Annotated[str, Form(description="fused (default), text or image")] = "fused",
) -> PdfSearchResponse:
    """Find the best page of the caller's PDFs (CLIP + page text) and ask Gemini about it."""
    limits = svc.settings.limits
    k = parse_top_k(top_k, 1, limits.max_top_k)
    search_mode = parse_mode(mode)
    text = clean_query(query, limits.max_query_chars)
    if text is None:
        raise BadRequest("`query` is required")
    with svc.admission.admit(Work.PDF_QUESTION, user):
        found = await svc.search.pdf(user, text, k, search_mode)
    if not found.pages:
        return PdfSearchResponse(
            query=text, top_result=None, gemini_answer=None, message=NO_PAGES, results=[]
        )
    ttl = svc.settings.auth.image_link_ttl_s

    def result(p: PdfPage) -> PageResult:
        return PageResult(
            filename=p.item,
            similarity=p.similarity,
            image_url=svc.links.sign(user, p.item, ttl),
            doc=p.doc,
            page=p.page,
            text_score=p.text_score,
            score=p.score,
            text_source=p.text_source,
            ocr_note=p.ocr_note,
        )

    results = [result(p) for p in found.pages]
    # the page the answer came from (Gemini names one of the best 3), else rank 1
    top = result(found.top) if found.top is not None else None
    return PdfSearchResponse(
        query=text,
        top_result=top or results[0],
        gemini_answer=found.answer,
        gemini_reason=found.reason,
        results=results,
    )


@router.get("/image/{path:path}", responses={404: {"description": "Image not found"}})
async def image(path: str, request: Request, svc: Svc, bearer: MaybeBearer) -> Response:
    """One of the caller's own images (HEIC converted to JPEG).

    Auth: the signed link a search result gives (`?u=&exp=&sig=`, one image, expiring), or
    the bearer header. A bearer token is never accepted in the URL.
    """
    if "sig" in request.query_params:
        user = svc.links.verify_query(path, request.query_params)
    else:
        user = await get_current_user(request, svc, bearer)
    file = resolve_item(svc.settings.data_dir, user, path)
    if not file.is_file():
        raise NotFound("Image not found")
    try:
        data, mime = await svc.executors.blocking.run(
            to_browser_bytes, file, svc.settings.limits.max_image_pixels
        )
    except Exception:  # noqa: BLE001 - unreadable: as good as missing to the caller
        raise NotFound("Image not found") from None
    return Response(
        content=data, media_type=mime, headers={"Cache-Control": "private, max-age=3600"}
    )
