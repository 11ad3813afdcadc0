"""Errors that imagerec raises on purpose.

Every error a user can cause derives from :class:`ImagerecError`. The CLI turns it into one line on stderr and
exit code 2; the server turns :class:`ImageRejected` into a 4xx JSON body with its stable ``code``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ImagerecError(Exception):
    """A user-facing error: the message says what was received, what was expected and how to fix it."""

    exit_code = 2
    code = "invalid_input"


class DataError(ImagerecError):
    """A dataset (folder, CSV, built-in) cannot be used as given."""

    code = "bad_dataset"


class RunError(ImagerecError):
    """A run directory is missing, incomplete, or would be overwritten."""

    code = "bad_run"


class ModelFileError(ImagerecError):
    """A model file was refused (format, pre-scan, hash, or safe-mode)."""

    code = "model_refused"


class ImageRejected(ImagerecError):
    """An image could not be decoded, or was refused before decoding.

    Attributes:
        code: a stable machine-readable reason (``empty``, ``unsupported_format``, ``image_too_large``,
            ``corrupt``, ``truncated``, ``unreadable``).
        status: the HTTP status the server answers with.
    """

    _STATUS = {
        "empty": 400,
        "unsupported_format": 415,
        "image_too_large": 413,
        "corrupt": 400,
        "truncated": 400,
        "unreadable": 400,
    }

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.status = self._STATUS.get(code, 400)


def did_you_mean(key: str, choices: Iterable[str]) -> str:
    """The hint that ends an "unknown name" error: ``"; did you mean 'epochs'?"``, or ``""`` if none is close.

    Every "unknown key / setting / option / model" error in imagerec builds its hint here, so they read alike.

    Example:
        >>> did_you_mean("epoch", ["epochs", "seed"])
        "; did you mean 'epochs'?"
    """
    close = difflib.get_close_matches(key, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""
