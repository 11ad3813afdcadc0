"""Pure ASGI middleware for the service's limits: body size, API key, deadline, JSON errors, security headers.

Written against raw ASGI (no ``BaseHTTPMiddleware``) so that the body limit counts the bytes of the
``http.request`` messages as they stream in: an honest ``Content-Length`` over the limit is refused before the body
is read, an understated one or a chunked body is cut off as soon as the counter passes the limit.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Paths reachable without the API key: the page and its assets (it asks for the key) and liveness probes.
PUBLIC_PATHS = frozenset({"/", "/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/favicon.ico"})
PUBLIC_PREFIXES = ("/static/",)
#: Health probes: never rate limited (an orchestrator must always be able to ask).
HEALTH_PATHS = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"})


class HTTPError(Exception):
    """An error answered as ``{"error": {"code", "message"}}`` with ``status`` (and optional headers)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


class BodyTooLarge(HTTPError):
    def __init__(self, limit: int, received: int):
        super().__init__(
            413,
            "payload_too_large",
            f"request body of at least {received} bytes exceeds the limit of {limit} bytes "
            f"({limit / 2**20:g} MB); send smaller images or start the server with a larger --max-upload-mb",
        )


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"cache-control", b"no-store")]


async def send_error(send: Send, err: HTTPError) -> None:
    body = error_body(err.code, err.message)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value
    return None


class LimitsMiddleware:
    """Outermost middleware: security headers, API key, body limit, deadline, and JSON for every failure.

    Args:
        app: the ASGI app to wrap.
        max_body: largest request body in bytes.
        api_key: when set, every non-public path needs ``X-API-Key: KEY`` or ``Authorization: Bearer KEY``.
        timeout_s: deadline for one request; past it the client gets 504 ``timeout``.
        observe: called as ``observe(path, status, seconds)`` after each HTTP request (metrics).
        rate_limiter: a :class:`imagerec.server.ratelimit.RateLimiter`; when set, each client (its API key, else
            its IP address) past its rate gets 429 ``rate_limited`` with ``Retry-After``. Health probes are exempt.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_body: int,
        api_key: str | None = None,
        timeout_s: float = 30.0,
        observe: Callable[[Scope, int, float], None] | None = None,
        rate_limiter: Any = None,
    ):
        self.app = app
        self.max_body = max_body
        self.api_key = api_key.encode() if api_key else None
        self.timeout_s = timeout_s
        self.observe = observe
        self.rate_limiter = rate_limiter

    @staticmethod
    def _given_key(scope: Scope) -> bytes | None:
        given = _header(scope, b"x-api-key")
        if given is None:
            auth = _header(scope, b"authorization") or b""
            given = auth[7:].strip() if auth[:7].lower() == b"bearer " else None
        return given

    def _rate_limit(self, scope: Scope) -> None:
        """Raise 429 when this request's client (API key, else IP) has used up its tokens."""
        if self.rate_limiter is None or scope.get("path", "") in HEALTH_PATHS:
            return
        if scope.get("method") == "OPTIONS" and _header(scope, b"access-control-request-method"):
            return
        key = self._given_key(scope)
        if key:
            client = "key:" + hashlib.sha256(key).hexdigest()[:32]
        else:
            client = "ip:" + str((scope.get("client") or ("unknown", 0))[0])
        wait = self.rate_limiter.acquire(client)
        if wait > 0:
            retry = self.rate_limiter.retry_after(wait)
            raise HTTPError(
                429,
                "rate_limited",
                f"too many requests: the limit is {self.rate_limiter.rate:g} per second per client; "
                f"retry after {retry} s",
                {"Retry-After": retry},
            )

    def _authorised(self, scope: Scope) -> bool:
        if self.api_key is None:
            return True
        path = scope.get("path", "")
        if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            return True
        if scope.get("method") == "OPTIONS" and _header(scope, b"access-control-request-method"):
            return True  # a CORS preflight never carries credentials; CORSMiddleware answers it
        given = _header(scope, b"x-api-key")
        if given is None:
            auth = _header(scope, b"authorization") or b""
            given = auth[7:].strip() if auth[:7].lower() == b"bearer " else b""
        # compare_digest on bytes of unequal length is still constant-time in the key's content
        return secrets.compare_digest(given, self.api_key)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        state = {"started": False, "status": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
                state["status"] = message["status"]
                message = dict(message)
                message["headers"] = list(message.get("headers", ())) + SECURITY_HEADERS
            await send(message)

        try:
            await self._handle(scope, receive, send_wrapper)
        except HTTPError as err:
            if not state["started"]:
                await send_error(send_wrapper, err)
        except asyncio.TimeoutError:
            if not state["started"]:
                await send_error(
                    send_wrapper,
                    HTTPError(
                        504,
                        "timeout",
                        f"the request took longer than the server's {self.timeout_s:g} s deadline; retry later",
                    ),
                )
        finally:
            if self.observe is not None:
                self.observe(scope, state["status"], time.perf_counter() - start)

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._authorised(scope):
            raise HTTPError(
                401,
                "unauthorized",
                "missing or wrong API key; send it as 'X-API-Key: KEY' or 'Authorization: Bearer KEY'",
                {"WWW-Authenticate": "Bearer"},
            )
        self._rate_limit(scope)
        declared = _header(scope, b"content-length")
        if declared is not None:
            try:
                length = int(declared)
                if length < 0:
                    raise ValueError
            except ValueError:
                raise HTTPError(400, "bad_request", f"invalid Content-Length {declared[:40]!r}") from None
            if length > self.max_body:
                raise BodyTooLarge(self.max_body, length)
        received = 0
        limit = self.max_body

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit, received)
            return message

        async with asyncio.timeout(self.timeout_s):  # no extra task per request (unlike wait_for)
            await self.app(scope, counting_receive, send)
