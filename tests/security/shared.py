"""Helpers the security tests share (re-exported from ``tests/imagefixtures.py``)."""

from __future__ import annotations

from imagefixtures import COLOURS, make_image, write_colour_dataset  # noqa: F401
