"""CLI commands of this stage (registered on imagerec.cli.app.app)."""

from __future__ import annotations

from imagerec.cli.app import app  # noqa: F401
