"""PDF rendering in a worker process: pages, text, naming, limits and hostile PDFs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pymupdf
import pytest
from PIL import Image

from lumen.config import LimitSettings
from lumen.errors import InvalidUpload, LimitExceeded
from lumen.ingest.pdf import page_zoom, render_pdf, sniff_pdf
from tests.support import hostile
from tests.support.hostile import HOSTILE_PDFS, HostileCase, make_pdf

LIMITS = LimitSettings()
REAL_PDF = Path(__file__).resolve().parents[1] / "data" / "shared-mime-info-spec.pdf"


def _pdf(tmp_path: Path, data: bytes, name: str = "upload.pdf") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    return tmp_path / "users" / "alice"


def _files(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*")) if root.exists() else []


def test_generated_three_page_pdf_gives_three_pages_with_text(
    tmp_path: Path, out_dir: Path
) -> None:
    pdf = _pdf(tmp_path, make_pdf(["alpha page", "beta page", "gamma page"]))
    pages = render_pdf(pdf, out_dir, "report", LIMITS)
    assert [p.page_number for p in pages] == [1, 2, 3]
    assert [p.path.name for p in pages] == [f"report_page_00{i}.jpg" for i in (1, 2, 3)]
    assert ["alpha" in pages[0].text, "beta" in pages[1].text, "gamma" in pages[2].text] == [
        True
    ] * 3
    for page in pages:
        assert page.path.parent == out_dir
        assert page.sha256 == hashlib.sha256(page.path.read_bytes()).hexdigest()
        with Image.open(page.path) as img:
            assert img.format == "JPEG"
            assert img.size[0] == pytest.approx(595 * 150 / 72, abs=1)
            assert img.size[1] == pytest.approx(842 * 150 / 72, abs=1)
    assert _files(out_dir) == [p.path.name for p in pages]


def test_real_third_party_pdf_renders_every_page(tmp_path: Path, out_dir: Path) -> None:
    with pymupdf.open(REAL_PDF) as doc:
        expected = doc.page_count
    pages = render_pdf(REAL_PDF, out_dir, "spec", LIMITS)
    assert len(pages) == expected > 1
    assert "Shared MIME-info Database" in pages[0].text
    assert len({p.sha256 for p in pages}) == expected


def test_colliding_stem_moves_the_whole_document(tmp_path: Path, out_dir: Path) -> None:
    first = render_pdf(_pdf(tmp_path, make_pdf(["one", "two"])), out_dir, "doc", LIMITS)
    before = {p.path: p.path.read_bytes() for p in first}
    second = render_pdf(_pdf(tmp_path, make_pdf(["three", "four"])), out_dir, "doc", LIMITS)
    assert [p.path.name for p in second] == ["doc_1_page_001.jpg", "doc_1_page_002.jpg"]
    assert {path: path.read_bytes() for path in before} == before
    assert "three" in second[0].text


def test_unsafe_doc_stem_stays_inside_the_folder(tmp_path: Path, out_dir: Path) -> None:
    pages = render_pdf(_pdf(tmp_path, make_pdf(["x"])), out_dir, "../../evil", LIMITS)
    assert pages[0].path.parent == out_dir
    assert pages[0].path.name == "_.._evil_page_001.jpg"


def test_not_a_pdf_is_refused(tmp_path: Path, out_dir: Path) -> None:
    with pytest.raises(InvalidUpload, match="is not a PDF"):
        render_pdf(_pdf(tmp_path, hostile.not_a_pdf()), out_dir, "x", LIMITS)


def test_password_protected_pdf_is_refused(tmp_path: Path, out_dir: Path) -> None:
    with pytest.raises(InvalidUpload, match="password"):
        render_pdf(_pdf(tmp_path, hostile.encrypted_pdf()), out_dir, "x", LIMITS)
    assert _files(out_dir) == []


def test_pdf_without_pages_is_refused(tmp_path: Path, out_dir: Path) -> None:
    with pytest.raises(InvalidUpload, match="PDF has no pages"):
        render_pdf(_pdf(tmp_path, hostile.zero_page_pdf()), out_dir, "x", LIMITS)


def test_too_many_pages_is_a_limit_and_leaves_no_files(tmp_path: Path, out_dir: Path) -> None:
    pdf = _pdf(tmp_path, make_pdf(["p"] * 6))
    with pytest.raises(LimitExceeded) as caught:
        render_pdf(pdf, out_dir, "x", LimitSettings(max_pdf_pages=5))
    assert caught.value.limit == "max_pdf_pages"
    assert _files(out_dir) == []


def test_slow_render_is_killed_and_leaves_no_pages(tmp_path: Path, out_dir: Path) -> None:
    pdf = _pdf(tmp_path, make_pdf(["slow"] * 3))
    with pytest.raises(InvalidUpload, match="longer than 0.01 s"):
        render_pdf(pdf, out_dir, "x", LimitSettings(pdf_timeout_s=0.01))
    assert _files(out_dir) == []


def test_huge_page_is_rendered_under_the_pixel_limit(tmp_path: Path, out_dir: Path) -> None:
    doc = pymupdf.open()
    page = doc.new_page(width=5000, height=5000)
    page.insert_text((100, 100), "poster", fontsize=80)
    pdf = _pdf(tmp_path, doc.tobytes())
    pages = render_pdf(pdf, out_dir, "poster", LimitSettings(max_image_pixels=1_000_000))
    with Image.open(pages[0].path) as img:
        assert img.size[0] * img.size[1] <= 1_000_000
        assert img.size[0] > 900


@pytest.mark.parametrize("case", HOSTILE_PDFS, ids=lambda case: case.name)
def test_hostile_pdf_corpus_gets_its_documented_outcome(
    tmp_path: Path, out_dir: Path, case: HostileCase
) -> None:
    expected = LimitExceeded if case.outcome == "limit_exceeded" else InvalidUpload
    with pytest.raises(expected) as caught:
        render_pdf(_pdf(tmp_path, case.build()), out_dir, "x", LIMITS)
    if case.limit:
        assert caught.value.limit == case.limit  # type: ignore[attr-defined]
    assert _files(out_dir) == []


def test_pdf_marker_may_follow_some_junk_but_not_too_much() -> None:
    assert sniff_pdf(b"%PDF-1.7\n")
    assert sniff_pdf(b"\xef\xbb\xbf junk %PDF-1.4")
    assert not sniff_pdf(b" " * 1024 + b"%PDF-1.4")
    assert not sniff_pdf(b"%!PS-Adobe")


def test_page_zoom_keeps_dpi_for_normal_pages_and_shrinks_huge_ones() -> None:
    assert page_zoom(595, 842, 150, 89_478_485) == pytest.approx(150 / 72)
    zoom = page_zoom(14_400, 14_400, 150, 1_000_000)
    assert (14_400 * zoom) ** 2 <= 1_000_000
