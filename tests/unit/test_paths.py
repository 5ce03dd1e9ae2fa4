"""Item paths: only what lies inside the user's own folder resolves; everything else is 404."""

from __future__ import annotations

from pathlib import Path

import pytest

from lumen.errors import NotFound
from lumen.paths import resolve_item


@pytest.mark.parametrize(
    "item",
    [
        "uploads/bob/a.jpg", "uploads/alice/../bob/a.jpg", "../etc/passwd", "uploads/alice",
        "/etc/passwd", "uploads/alice/../../x", "data/uploads/bob/a.jpg",
    ],
)  # fmt: skip
def test_paths_outside_the_users_folder_are_not_found(tmp_path: Path, item: str) -> None:
    with pytest.raises(NotFound):
        resolve_item(tmp_path, "alice", item)


def test_symlinks_leading_out_of_the_users_folder_are_not_found(tmp_path: Path) -> None:
    folder = tmp_path / "uploads" / "alice"
    folder.mkdir(parents=True)
    (tmp_path / "secret.txt").write_text("x")
    (folder / "link.jpg").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(NotFound):
        resolve_item(tmp_path, "alice", "uploads/alice/link.jpg")


def test_item_forms_the_api_shows_resolve_to_the_same_file(tmp_path: Path) -> None:
    expected = (tmp_path / "uploads" / "alice" / "pdfs" / "a.jpg").resolve()
    for item in (
        "uploads/alice/pdfs/a.jpg",
        "/uploads/alice/pdfs/a.jpg",
        "/data/uploads/alice/pdfs/a.jpg",
    ):
        assert resolve_item(tmp_path, "alice", item) == expected
