"""Settings: the JWT secret is never a placeholder, and a generated one is private and stable."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

from lumen.config import Settings, load_or_create_secret


@pytest.mark.parametrize("secret", ["changeme", "secret", "tooshort"])
def test_settings_refuse_placeholder_or_short_jwt_secrets(secret: str) -> None:
    with pytest.raises(ValidationError):
        Settings(auth={"jwt_secret": secret})


def test_the_generated_secret_is_private_and_stable(tmp_path: Path) -> None:
    path = tmp_path / "jwt_secret"
    first = load_or_create_secret(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(first) >= 32
    assert load_or_create_secret(path) == first
    settings = Settings(data_dir=tmp_path).with_local_secret()
    assert settings.auth.jwt_secret == first
