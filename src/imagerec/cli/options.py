"""Typer options whose defaults are read from ``imagerec.settings``, so no default is typed a second time."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import typer

from imagerec.settings import default_of


def option(cls: type, name: str, *flags: str, **kwargs: Any) -> Any:
    """``typer.Option`` defaulting to field ``name`` of settings class ``cls`` (a tuple becomes a list).

    Example:
        >>> max_batch: int = option(ServeSettings, "max_batch", "--max-batch", help="Most images per model call.")
    """
    default = default_of(cls, name)
    return typer.Option(list(default) if isinstance(default, tuple) else default, *flags, **kwargs)


def options_of(cls: type) -> Callable[..., Any]:
    """:func:`option` bound to one settings class: ``serve_option("port", help="TCP port.")``."""
    return functools.partial(option, cls)
