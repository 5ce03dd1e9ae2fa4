"""Item paths: every path a user can name is resolved inside that user's folder, or refused."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from lumen.errors import NotFound


def user_root(data_dir: Path, user: str) -> Path:
    return (data_dir / "uploads" / user).resolve()


def item_name(user: str, relative: str) -> str:
    """The API's name for a file under the user's folder: `uploads/<user>/<relative>`."""
    return f"uploads/{user}/{relative}"


def resolve_item(data_dir: Path, user: str, item: str) -> Path:
    """Map an item name to a file in the user's folder; NotFound for anything outside it.

    Accepts `uploads/<user>/...`, a leading `/` or a `/data/` prefix (the spec's
    `image_path`); refuses `..`, other users' folders and symlinks leading out.
    """
    text = item.strip().lstrip("/")
    if text.startswith("data/uploads/"):
        text = text[len("data/") :]
    parts = PurePosixPath(text).parts
    if len(parts) < 3 or parts[0] != "uploads" or parts[1] != user or ".." in parts:
        raise NotFound("Image not found")
    root = user_root(data_dir, user)
    path = (root / PurePosixPath(*parts[2:])).resolve()
    if not path.is_relative_to(root):
        raise NotFound("Image not found")
    return path


def relative_item(data_dir: Path, user: str, path: Path) -> str:
    """The item name of a file known to lie in the user's folder."""
    rel = path.resolve().relative_to(user_root(data_dir, user))
    return item_name(user, rel.as_posix())
