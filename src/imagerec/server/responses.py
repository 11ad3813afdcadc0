"""The JSON responses every route sends: a body, or ``{"error": {"code", "message"}}`` (see ``limits.error_body``).

Shared by ``app`` and the route modules, so that no route module imports the app that registers it.
"""

from __future__ import annotations

import json
from typing import Any

from imagerec.server.limits import error_body


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None):
    """Compact JSON (no spaces), ``application/json``."""
    from starlette.responses import Response

    return Response(json.dumps(obj, separators=(",", ":")), status, headers, media_type="application/json")


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None):
    """The error body of every failure: ``{"error": {"code": code, "message": message}}``."""
    from starlette.responses import Response

    return Response(error_body(code, message), status, headers, media_type="application/json")


def internal_error_response(exc: BaseException):
    """500 ``internal`` for an unexpected exception: its type only (no traceback or message leaks out)."""
    return error_response(500, "internal", f"internal error ({type(exc).__name__}); the server keeps running")


__all__ = ["error_response", "internal_error_response", "json_response"]
