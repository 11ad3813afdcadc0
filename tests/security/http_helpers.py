"""Shared pieces of the HTTP security tests: a live server around the session's run, probes, raw requests."""

from __future__ import annotations

import socket
import statistics
import threading
import time

import numpy as np


def colour_png(colour=(220, 30, 30), seed: int = 0) -> bytes:
    import io

    from PIL import Image

    from .shared import make_image

    buf = io.BytesIO()
    Image.fromarray(make_image(colour, np.random.default_rng(seed))).save(buf, format="PNG")
    return buf.getvalue()


class HealthProbe:
    """Poll ``/healthz`` every ``every`` seconds in a thread; ``latencies`` in seconds, ``failures`` counted."""

    def __init__(self, url: str, every: float = 0.02):
        self.url = url
        self.every = every
        self.latencies: list[float] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import httpx

        with httpx.Client(timeout=5.0) as client:
            while not self._stop.is_set():
                start = time.perf_counter()
                try:
                    ok = client.get(f"{self.url}/healthz").status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.latencies.append(time.perf_counter() - start)
                self.failures += not ok
                self._stop.wait(self.every)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    @property
    def median_ms(self) -> float:
        return 1000 * statistics.median(self.latencies)

    @property
    def max_ms(self) -> float:
        return 1000 * max(self.latencies)


def raw_exchange(
    host: str, port: int, head: bytes, body_chunks=(), timeout: float = 10.0
) -> tuple[int, bytes, int]:
    """Send ``head`` then the chunks until the server answers or closes; return (status, response, bytes sent)."""
    import select

    sock = socket.create_connection((host, port), timeout=timeout)
    sent = 0
    data = b""
    try:
        sock.sendall(head)
        for piece in body_chunks:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break  # the server has answered (or closed) while we were still sending
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(piece)
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in data and time.monotonic() < deadline:
            try:
                more = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not more:
                break
            data += more
        if b"\r\n\r\n" in data:  # read the rest of a JSON body if it is short
            try:
                sock.settimeout(0.5)
                more = sock.recv(65536)
                data += more
            except (OSError, TimeoutError):
                pass
    finally:
        sock.close()
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    return status, data, sent
