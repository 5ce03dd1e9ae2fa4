"""PDF uploads: each page rendered to a JPEG (plus its text) in a time-limited worker process.

MuPDF runs in a child process (`python -m lumen.ingest.pdf`) so that a hostile PDF can
hang or crash only that child: it is killed after `pdf_timeout_s`. The child renders into
a hidden staging folder (`.pdf-<uuid>/` inside `out_dir`) that is always removed, so a
failed render leaves no pages behind. Finished pages are moved to `{stem}_page_001.jpg`
(wider numbers past 999 pages); when `{stem}_page_*` files already exist the whole
document moves to `{stem}_1`, `{stem}_2`, ... Page files are claimed with O_EXCL, so
nothing is ever overwritten.

The child runs with an environment that holds no secrets (`child_env`: a short allow-list,
never `LUMEN_*`, `REDIS_URL` or API keys) and, before it touches the PDF, caps its own
address space and CPU time (`apply_limits`: `pdf_max_memory_bytes`, `pdf_cpu_s`). The limits
are set by the child itself rather than through `preexec_fn`, which is unsafe in a process
with threads (the ingress renders on a thread pool).

The child also reads what the ranking needs from each page (issue 16, docs/retrieval.md):
its text layer, its headings (lines set larger or bolder than the document's body text,
from PyMuPDF span sizes and flags) and, for a page without a text layer, the text
Tesseract reads on the rendered bitmap (`ocr_page`). All OCR of one PDF shares
`pdf_ocr_timeout_s`; pages past it, and pages where Tesseract fails or is missing, keep an
empty text and a `note`; OCR never fails a page or the document. `text_source` says where
a page's text came from: "text" (the PDF's text layer), "ocr", or "none".
"""

from __future__ import annotations

import glob
import hashlib
import importlib
import io
import json
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lumen.errors import InvalidUpload, LimitExceeded
from lumen.ingest.archive import safe_stem
from lumen.ocr import OCR_FAILED_NOTE, OCR_TIMEOUT_NOTE, OCR_UNAVAILABLE_NOTE, ocr_page

if TYPE_CHECKING:
    from lumen.config import LimitSettings

JPEG_QUALITY = 90
MAX_JPEG_SIDE = 65_000  # JPEG cannot store a side longer than 65535 pixels
_RESULT_PREFIX = "LUMEN-PDF-RESULT "
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]
# The only variables the render child inherits: what Python, locale and temp files need.
CHILD_ENV_NAMES = frozenset({"PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "LD_LIBRARY_PATH"})
CHILD_ENV_PREFIXES = ("LC_",)
_CPU_GRACE_S = 5  # between SIGXCPU (soft limit) and SIGKILL (hard limit)
# A page whose text layer holds fewer word characters than this is OCRed (scans often
# carry a stray page number or a scanner's stamp as text).
OCR_MIN_WORD_CHARS = 20
HEADING_SIZE_RATIO = 1.15  # a line this much larger than the body text is a heading
MAX_HEADING_CHARS = 400
MAX_HEADING_WORDS = 14  # a bold line longer than this is emphasis, not a heading
_BOLD_FLAG = 16  # PyMuPDF span flag
MAX_SECTION_CHARS = 300
_SECTION_NUMBER = re.compile(r"^(?:[A-Z]\.)?\d+(?:\.\d+)+\.?$")  # 2.4, 2.5.1, C.1.2
_HEADING_TITLE = re.compile(r"^[A-Z][\w’'()/-]*(?: [\w’'()/&,:-]+){0,9}\.?$")
_NUMBERED_HEADING = re.compile(
    r"^(?P<number>(?:[A-Z]\.)?\d+(?:\.\d+)+\.?) (?P<title>[A-Z][\w’'()/-]*"
    r"(?: [\w’'()/&,:-]+){0,9}\.?)$"
)
_OUTLINE_JUNK = re.compile(r"\\[a-z]+|[\x00-\x1f{}$\\]")
_ENDS_IN_PAGE_NUMBER = re.compile(r"(?:\s|\.)\d+$")

TEXT_SOURCES = ("text", "ocr", "none")


@dataclass(frozen=True)
class RenderedPage:
    """One rendered page: its JPEG on disk, 1-based number, extracted text and hash.

    `text_source` is where `text` came from ("text", "ocr" or "none"); `headings` is the
    page's heading lines; `section` is the heading path the page sits under, from the PDF's
    outline ("" without one); `note` is set when OCR was skipped or failed for the page.
    """

    path: Path
    page_number: int
    text: str
    sha256: str
    text_source: str = "text"
    headings: str = ""
    note: str = ""
    section: str = ""


_NOTE_WORDS = {
    OCR_TIMEOUT_NOTE: "OCR ran out of time",
    OCR_FAILED_NOTE: "OCR failed",
    OCR_UNAVAILABLE_NOTE: "OCR is not installed",
}


def ocr_note(pages: list[RenderedPage]) -> str:
    """A sentence for the upload's message naming pages OCR could not read (or "")."""
    by_note: dict[str, list[int]] = {}
    for page in pages:
        if page.note in _NOTE_WORDS:
            by_note.setdefault(page.note, []).append(page.page_number)
    parts = [
        f" {_NOTE_WORDS[note]} on {len(numbers)} page{'s' if len(numbers) != 1 else ''}"
        f" ({_page_list(numbers)}); they are queued without text."
        for note, numbers in by_note.items()
    ]
    return "".join(parts)


def _page_list(numbers: list[int], shown: int = 10) -> str:
    text = ", ".join(str(n) for n in numbers[:shown])
    return text + (f" and {len(numbers) - shown} more" if len(numbers) > shown else "")


def sniff_pdf(head: bytes) -> bool:
    """True when the first KiB carries the `%PDF-` marker (readers allow leading junk)."""
    return b"%PDF-" in head[:1024]


def render_pdf(
    pdf_path: Path, out_dir: Path, doc_stem: str, limits: LimitSettings
) -> list[RenderedPage]:
    """Render every page of `pdf_path` into `out_dir`; refuse bad or oversized PDFs."""
    with pdf_path.open("rb") as handle:
        if not sniff_pdf(handle.read(1024)):
            raise InvalidUpload(f"'{pdf_path.name}' is not a PDF")
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = out_dir / f".pdf-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        pages = _run_worker(pdf_path, staging, limits)
        return _publish(pages, out_dir, safe_stem(doc_stem, fallback="document"))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _publish(pages: list[RenderedPage], out_dir: Path, stem: str) -> list[RenderedPage]:
    """Move staged pages to `{stem}_page_NNN.jpg`, moving the whole doc to a free stem."""
    counter = 0
    while True:
        candidate = f"{stem}_{counter}" if counter else stem
        counter += 1
        if glob.glob(glob.escape(str(out_dir / f"{candidate}_page_")) + "*"):
            continue
        published: list[RenderedPage] = []
        try:
            for page in pages:
                final = out_dir / f"{candidate}_{page.path.name}"
                os.close(os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
                os.replace(page.path, final)
                published.append(replace(page, path=final))
        except FileExistsError:  # lost a race for this stem: put pages back, try the next
            for done, staged in zip(published, pages, strict=False):
                os.replace(done.path, staged.path)
            continue
        return published


def _run_worker(pdf_path: Path, staging: Path, limits: LimitSettings) -> list[RenderedPage]:
    job = {
        "pdf": str(pdf_path),
        "out_dir": str(staging),
        "dpi": limits.pdf_dpi,
        "max_pixels": limits.max_image_pixels,
        "max_pages": limits.max_pdf_pages,
        "max_memory_bytes": limits.pdf_max_memory_bytes,
        "cpu_s": limits.pdf_cpu_s,
        "ocr": limits.pdf_ocr,
        "ocr_timeout_s": limits.pdf_ocr_timeout_s,
        "ocr_lang": limits.pdf_ocr_lang,
    }
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "lumen.ingest.pdf", json.dumps(job)],
            capture_output=True,
            text=True,
            timeout=limits.pdf_timeout_s,
            env=child_env(os.environ),
        )
    except subprocess.TimeoutExpired as exc:
        raise InvalidUpload(f"PDF took longer than {limits.pdf_timeout_s:g} s to render") from exc
    return _parse_result(proc, limits)


def child_env(parent: Mapping[str, str]) -> dict[str, str]:
    """The render child's environment: the allow-listed names of `parent`, and PYTHONPATH.

    Nothing else passes: no `LUMEN_*` settings, no `REDIS_URL`, no API keys or tokens.
    """
    env = {
        name: value
        for name, value in parent.items()
        if name in CHILD_ENV_NAMES or name.startswith(CHILD_ENV_PREFIXES)
    }
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(_PACKAGE_ROOT), parent.get("PYTHONPATH")])
    )
    return env


_RENDER_NICENESS = 10


def apply_limits(max_memory_bytes: int, cpu_s: float) -> None:
    """Cap this process's address space and CPU seconds (0 leaves a limit as it is).

    Only lowers limits: a hard limit already below the request is kept.
    """
    if max_memory_bytes > 0:
        _lower(resource.RLIMIT_AS, max_memory_bytes, max_memory_bytes)
    if cpu_s > 0:
        soft = max(1, math.ceil(cpu_s))
        _lower(resource.RLIMIT_CPU, soft, soft + _CPU_GRACE_S)
    _lower(resource.RLIMIT_CORE, 0, 0)  # a crashing hostile PDF leaves no core file
    # Rendering is batch work: interactive requests of every user come first on the CPU.
    os.nice(_RENDER_NICENESS)


def _lower(which: int, soft: int, hard: int) -> None:
    _, current_hard = resource.getrlimit(which)
    if current_hard != resource.RLIM_INFINITY:
        hard = min(hard, current_hard)
        soft = min(soft, hard)
    resource.setrlimit(which, (soft, hard))


def _parse_result(
    proc: subprocess.CompletedProcess[str], limits: LimitSettings
) -> list[RenderedPage]:
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(_RESULT_PREFIX)]
    if not lines and proc.returncode == -signal.SIGXCPU:
        raise LimitExceeded(
            f"the PDF needs more than {limits.pdf_cpu_s:g} CPU seconds to render",
            "pdf_cpu_s",
        )
    if not lines:
        detail = proc.stderr.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        raise InvalidUpload(f"the PDF could not be rendered ({detail[0]})")
    result = json.loads(lines[-1][len(_RESULT_PREFIX) :])
    if result["error"] == "limit":
        raise LimitExceeded(result["message"], result["limit"])
    if result["error"]:
        raise InvalidUpload(result["message"])
    return [RenderedPage(**(p | {"path": Path(p["path"])})) for p in result["pages"]]


# ---- everything below runs inside the worker process ----


def _import_pymupdf() -> Any:
    try:
        return importlib.import_module("pymupdf")
    except ImportError:  # older releases only ship the `fitz` name
        return importlib.import_module("fitz")


@dataclass(frozen=True)
class OcrJob:
    """OCR settings for one document: on/off, the shared time budget, Tesseract's language."""

    enabled: bool = False
    timeout_s: float = 60.0
    lang: str = "eng"


def render_in_process(
    pdf: Path,
    out_dir: Path,
    dpi: int,
    max_pixels: int,
    max_pages: int,
    ocr: OcrJob | None = None,
) -> list[RenderedPage]:
    """Render in this process (the worker's body); callers want `render_pdf`."""
    ocr = ocr or OcrJob()
    pymupdf = _import_pymupdf()
    try:
        doc = pymupdf.open(pdf, filetype="pdf")
    except Exception as exc:  # MuPDF raises its own types for every kind of damage
        raise InvalidUpload(f"the PDF is damaged and cannot be opened: {exc}") from exc
    with doc:
        if doc.needs_pass:
            raise InvalidUpload("password-protected PDFs are not supported; remove the password")
        count = doc.page_count
        if count == 0:
            raise InvalidUpload("PDF has no pages")
        if count > max_pages:
            raise LimitExceeded(
                f"the PDF has {count} pages; the limit is {max_pages}", "max_pdf_pages"
            )
        width = max(3, len(str(count)))
        pages: list[RenderedPage] = []
        lines: list[list[tuple[float, bool, str]]] = []
        deadline = time.monotonic() + ocr.timeout_s
        for i in range(count):
            path = out_dir / f"page_{i + 1:0{width}d}.jpg"
            page, page_lines = _render_page(pymupdf, doc[i], path, dpi, max_pixels, ocr, deadline)
            pages.append(page)
            lines.append(page_lines)
        body = body_text_size(lines)
        sections = outline_sections(_outline(doc), count)
        return [
            replace(
                page,
                headings=heading_text(page_lines, body, page.text),
                section=section,
            )
            for page, page_lines, section in zip(pages, lines, sections, strict=True)
        ]


def _outline(doc: Any) -> list[tuple[int, str, int]]:
    try:
        return [(int(level), str(title), int(page)) for level, title, page, *_ in doc.get_toc()]
    except Exception:  # noqa: BLE001 (a broken outline is no outline)
        return []


def outline_sections(outline: list[tuple[int, str, int]], count: int) -> list[str]:
    """Per page, the heading path it sits under: the outline entries open at the top of
    the page, then those that start on it (`outline`: (level, title, 1-based page))."""
    starts: dict[int, list[tuple[int, str]]] = {}
    for level, title, page in outline:
        clean = " ".join(_OUTLINE_JUNK.sub(" ", title).split())
        if 1 <= page <= count and clean:
            starts.setdefault(page, []).append((level, clean))
    sections: list[str] = []
    open_path: list[tuple[int, str]] = []
    for number in range(1, count + 1):
        here = starts.get(number, [])
        entered = [title for level, title in here if (level, title) not in open_path]
        titles = [title for _, title in open_path] + entered
        sections.append(" / ".join(dict.fromkeys(titles))[:MAX_SECTION_CHARS])
        for level, title in here:
            open_path = [e for e in open_path if e[0] < level] + [(level, title)]
    return sections


def body_text_size(pages: list[list[tuple[float, bool, str]]]) -> float:
    """The document's body text size: the size that sets the most characters."""
    chars: Counter[float] = Counter()
    for lines in pages:
        for size, _, text in lines:
            chars[round(size * 2) / 2] += len(text)
    return chars.most_common(1)[0][0] if chars else 0.0


def heading_text(lines: list[tuple[float, bool, str]], body_size: float, text: str = "") -> str:
    """The page's heading lines: larger than the body text, or short and all bold, then
    numbered section titles found in `text` ("2.4 Sizing parallel tasks", also where the
    fonts say nothing: bitmap fonts, OCR)."""
    heads = [
        line
        for size, bold, line in lines
        if body_size > 0
        and any(ch.isalpha() for ch in line)
        and (
            size >= body_size * HEADING_SIZE_RATIO
            or (bold and len(line.split()) <= MAX_HEADING_WORDS)
        )
    ]
    known = {" ".join(h.split()) for h in heads}
    heads += [h for h in numbered_headings(text) if h not in known]
    return "\n".join(heads)[:MAX_HEADING_CHARS]


def numbered_headings(text: str) -> list[str]:
    """Section titles numbered like "2.4 Sizing parallel tasks." or "2.5.1" on a line of
    its own above "External vertices"; a line ending in a page number (contents) is not one."""
    lines = [" ".join(ln.split()) for ln in text.splitlines()]
    found: list[str] = []
    for at, line in enumerate(lines):
        match = _NUMBERED_HEADING.match(line)
        if match and match["title"]:
            title = match["title"]
        elif _SECTION_NUMBER.match(line) and at + 1 < len(lines):
            title = lines[at + 1]
            if not _HEADING_TITLE.match(title):
                continue
        else:
            continue
        if _ENDS_IN_PAGE_NUMBER.search(title):
            continue
        found.append(f"{match['number'] if match else line} {title.rstrip('.')}".strip())
    return found


def _line_styles(page: Any) -> list[tuple[float, bool, str]]:
    """(largest span size, all spans bold, text) of each text line on the page."""
    out: list[tuple[float, bool, str]] = []
    for block in page.get_text("dict").get("blocks", []):
        for line in block.get("lines", []):
            spans = [sp for sp in line.get("spans", []) if sp.get("text", "").strip()]
            if not spans:
                continue
            text = " ".join(sp["text"].strip() for sp in spans)
            size = max(float(sp.get("size", 0.0)) for sp in spans)
            bold = all(int(sp.get("flags", 0)) & _BOLD_FLAG for sp in spans)
            out.append((size, bold, text))
    return out


def needs_ocr(text: str) -> bool:
    """True when the text layer is (nearly) empty: a scanned or image-only page."""
    return sum(ch.isalnum() for ch in text) < OCR_MIN_WORD_CHARS


def page_zoom(width_pt: float, height_pt: float, dpi: int, max_pixels: int) -> float:
    """The scale for a page: `dpi`, reduced so the bitmap stays under `max_pixels`."""
    zoom = dpi / 72.0
    area = max(width_pt * height_pt, 1.0)
    if area * zoom * zoom > max_pixels:
        zoom = math.sqrt(max_pixels / area) * 0.999
    return min(zoom, MAX_JPEG_SIDE / max(width_pt, 1.0), MAX_JPEG_SIDE / max(height_pt, 1.0))


def _render_page(
    pymupdf: Any,
    page: Any,
    path: Path,
    dpi: int,
    max_pixels: int,
    ocr: OcrJob,
    ocr_deadline: float,
) -> tuple[RenderedPage, list[tuple[float, bool, str]]]:
    from PIL import Image

    number = page.number + 1
    try:
        zoom = page_zoom(page.rect.width, page.rect.height, dpi, max_pixels)
        pix = page.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), alpha=False)
        img = Image.frombytes("RGB", (pix.width, pix.height), pix.samples)
        text = page.get_text()
        lines = _line_styles(page)
    except MemoryError:
        raise  # the address-space limit: reported as a limit, not as a damaged page
    except Exception as exc:
        raise InvalidUpload(f"page {number} of the PDF cannot be rendered: {exc}") from exc
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    data = buffer.getvalue()
    with path.open("xb") as out:
        out.write(data)
    source, note = ("text" if text.strip() else "none"), ""
    if ocr.enabled and needs_ocr(text):
        read, note = ocr_page(img, ocr.lang, ocr_deadline - time.monotonic())
        if read:
            text, source, lines = read, "ocr", []
    page_out = RenderedPage(path, number, text, hashlib.sha256(data).hexdigest(), source)
    return replace(page_out, note=note), lines


def _worker_main(job_json: str) -> dict[str, Any]:
    job = json.loads(job_json)
    apply_limits(int(job.get("max_memory_bytes", 0)), float(job.get("cpu_s", 0)))
    # Tesseract runs as this child's own child: one thread, so OCR cannot crowd the box.
    os.environ["OMP_THREAD_LIMIT"] = "1"
    try:
        pages = render_in_process(
            Path(job["pdf"]),
            Path(job["out_dir"]),
            job["dpi"],
            job["max_pixels"],
            job["max_pages"],
            OcrJob(
                bool(job.get("ocr", False)),
                float(job.get("ocr_timeout_s", 0)),
                str(job.get("ocr_lang", "eng")),
            ),
        )
    except LimitExceeded as exc:
        return {"error": "limit", "message": exc.message, "limit": exc.limit}
    except InvalidUpload as exc:
        return {"error": "invalid", "message": exc.message}
    except MemoryError:
        limit = int(job.get("max_memory_bytes", 0))
        return {
            "error": "limit",
            "message": f"the PDF needs more than {limit / 1024**2:.0f} MiB of memory to render",
            "limit": "pdf_max_memory_bytes",
        }
    return {"error": None, "pages": [asdict(p) | {"path": str(p.path)} for p in pages]}


if __name__ == "__main__":
    # pymupdf imports its optional layout add-ons (and onnxruntime) eagerly; plain rendering
    # never uses it, and skipping it saves most of the worker's start-up time.
    for _optional in ("pymupdf.layout", "pymupdf4llm"):
        sys.modules.setdefault(_optional, None)  # type: ignore[arg-type]
    print(_RESULT_PREFIX + json.dumps(_worker_main(sys.argv[1])), flush=True)
