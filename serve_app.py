"""Composition only: builds the Serve application from settings and nothing else."""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from deployments.embedder import Embedder
from deployments.ingress import Ingress
from lumen.config import Settings


def build_app(args: dict[str, Any] | None = None) -> Application:
    """Serve application builder (`import_path: serve_app:build_app`).

    `args.settings` overrides `LUMEN_*` environment settings (nested dicts).
    """
    settings = Settings(**(args or {}).get("settings", {})).with_local_secret()
    return Ingress.bind(settings, Embedder.bind(settings))
