"""PDF rendering in a worker process: pages, text, naming, limits and hostile PDFs."""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pymupdf
import pytest
from PIL import Image

from lumen.config import LimitSettings
from lumen.errors import InvalidUpload, LimitExceeded
from lumen.ingest.pdf import _parse_result, child_env, page_zoom, render_pdf, sniff_pdf
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


# ---- the render child: no secrets in its environment, capped memory and CPU ----

SECRETS = {
    "LUMEN_REDIS__URL": "redis://:hunter2@10.0.0.5:6379/0",
    "LUMEN_AUTH__JWT_SECRET": "j" * 48,
    "LUMEN_GEMINI__API_KEY": "AIza-secret-gemini",
    "REDIS_URL": "redis://:hunter2@10.0.0.5:6379/0",
    "GEMINI_API_KEY": "AIza-secret-gemini",
    "AWS_SECRET_ACCESS_KEY": "aws-secret",
}


def test_child_env_keeps_only_the_allow_list_and_adds_the_package_to_pythonpath() -> None:
    parent = {**SECRETS, "PATH": "/usr/bin", "LANG": "C.UTF-8", "LC_ALL": "C", "HOME": "/h"}
    env = child_env(parent)
    assert not set(SECRETS) & set(env)
    assert {k: env[k] for k in ("PATH", "LANG", "LC_ALL", "HOME")} == {
        "PATH": "/usr/bin", "LANG": "C.UTF-8", "LC_ALL": "C", "HOME": "/h",
    }  # fmt: skip
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(Path(__file__).resolve().parents[2])


def test_the_real_render_child_sees_no_secrets(
    tmp_path: Path, out_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dump = tmp_path / "child-env.txt"
    spy = tmp_path / "python-spy"
    spy.write_text(f'#!/bin/sh\nenv > "{dump}"\nexec "{sys.executable}" "$@"\n')
    spy.chmod(spy.stat().st_mode | stat.S_IEXEC)
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(sys, "executable", str(spy))
    pages = render_pdf(_pdf(tmp_path, make_pdf(["hello"])), out_dir, "doc", LIMITS)
    seen = dump.read_text()
    assert len(pages) == 1 and "PATH=" in seen  # the spy ran, and it was the real child
    assert not [v for v in SECRETS.values() if v in seen]
    assert "LUMEN_" not in seen and "REDIS" not in seen


def _limited_child(
    code: str, max_memory_bytes: int, cpu_s: float
) -> subprocess.CompletedProcess[str]:
    prelude = (
        f"from lumen.ingest.pdf import apply_limits\napply_limits({max_memory_bytes}, {cpu_s})\n"
    )
    return subprocess.run(
        [sys.executable, "-c", prelude + code],
        capture_output=True,
        text=True,
        timeout=120,
        env=child_env(os.environ),
    )


def test_the_address_space_limit_stops_a_big_allocation() -> None:
    code = (
        "import resource\n"
        "print(resource.getrlimit(resource.RLIMIT_AS)[0])\n"
        "try:\n    bytearray(1024**3)\nexcept MemoryError:\n    print('refused')\n"
    )
    proc = _limited_child(code, 512 * 1024**2, 0)
    assert proc.stdout.split() == [str(512 * 1024**2), "refused"], proc.stderr


def test_the_cpu_limit_ends_a_child_that_spins() -> None:
    proc = _limited_child("while True:\n    pass\n", 0, 1)
    assert proc.returncode == -signal.SIGXCPU


def test_a_child_ended_by_the_cpu_limit_is_reported_as_that_limit() -> None:
    proc = subprocess.CompletedProcess(["python"], -signal.SIGXCPU, stdout="", stderr="")
    with pytest.raises(LimitExceeded) as caught:
        _parse_result(proc, LimitSettings(pdf_cpu_s=3))
    assert caught.value.limit == "pdf_cpu_s" and "3 CPU seconds" in caught.value.message


def test_a_page_too_big_for_the_memory_limit_is_a_limit_not_a_crash(
    tmp_path: Path, out_dir: Path
) -> None:
    doc = pymupdf.open()
    page = doc.new_page(width=14_400, height=14_400)  # ~89 M pixels: ~1 GB to render
    page.insert_text((100, 100), "billboard", fontsize=200)
    pdf = _pdf(tmp_path, doc.tobytes())
    with pytest.raises(LimitExceeded) as caught:
        render_pdf(pdf, out_dir, "x", LimitSettings(pdf_max_memory_bytes=640 * 1024**2))
    assert caught.value.limit == "pdf_max_memory_bytes"
    assert _files(out_dir) == []
