"""A real uvicorn server on 127.0.0.1 (free port, own thread) around the session's tiny trained run."""

from __future__ import annotations

import io
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from imagefixtures import COLOURS, make_image  # noqa: F401 - make_image is re-exported to the server tests


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class LiveServer:
    """Run an ASGI app with uvicorn in a background thread; ``url`` is its base address.

    ``port`` defaults to a free one; ``log_level`` is uvicorn's (``error`` keeps test output quiet).
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int | None = None, log_level: str = "error"):
        import uvicorn

        self.host = host
        self.port = port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        config = uvicorn.Config(app, host=host, port=self.port, log_level=log_level, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def serve_cli(monkeypatch, args: list[str], check=None, code: int = 0) -> int:
    """Run ``imagerec serve ARGS`` (flags, environment) with ``uvicorn.run`` swapped for a :class:`LiveServer`
    on the host, port and log level the CLI passed to uvicorn; ``check(live)`` talks to it while it runs.
    ``live.app`` is the app the CLI built, ``live.options`` the rest of what it passed to ``uvicorn.run``.

    Without ``--port`` in ARGS a free port is added. Asserts the exit code is ``code`` and that a server
    started exactly when ``code`` is 0 (a refused run must never reach uvicorn). ``--workers N>1`` runs
    separate processes, which one in-process server cannot stand for: it fails loudly (see test_serve_workers).
    """
    import uvicorn

    from imagerec.cli import main

    started: list[LiveServer] = []

    def run(app, host: str, port: int, log_level: str, **options) -> None:
        if options.get("workers", 1) != 1 or not callable(app):
            pytest.fail(f"serve_cli runs one in-process server; got app={app!r}, options={options}")
        with LiveServer(app, host=host, port=port, log_level=log_level) as live:
            live.app = app
            live.options = {"host": host, "port": port, "log_level": log_level, **options}
            started.append(live)
            if check is not None:
                check(live)

    monkeypatch.setattr(uvicorn, "run", run)
    if "--port" not in args:
        args = [*args, "--port", str(free_port())]
    try:
        main(["serve", *args])
        exit_code = 0
    except SystemExit as exc:
        exit_code = int(exc.code or 0)
    assert exit_code == code, f"imagerec serve exited with {exit_code}, expected {code}"
    assert len(started) == (1 if code == 0 else 0), f"{len(started)} server(s) started"
    return exit_code


def png_bytes(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="session")
def colour_pngs() -> dict[str, bytes]:
    """One PNG per colour class (the trained run recognises them)."""
    rng = np.random.default_rng(123)
    return {name: png_bytes(make_image(colour, rng)) for name, colour in COLOURS.items()}


@pytest.fixture(scope="session")
def classifier(trained_run: Path):
    from imagerec.classifier import Classifier

    return Classifier.load(trained_run)


@pytest.fixture(scope="module")
def server(classifier):
    """The service with default settings except a 2 MB upload limit and 4 files per request."""
    from imagerec.server.app import create_app
    from imagerec.settings import ServeSettings

    app = create_app(classifier, ServeSettings(max_upload_mb=2, max_files=4, max_wait_ms=20))
    with LiveServer(app) as live:
        live.app = app
        yield live


@pytest.fixture
def client(server):
    import httpx

    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


@pytest.fixture(scope="session")
def multilabel_pngs() -> dict[tuple[str, ...], bytes]:
    """PNGs of colour squares on grey (the multi-label run's kind of image), keyed by the colours they show."""
    from imagefixtures import make_multilabel_image

    rng = np.random.default_rng(7)
    sets = [("red",), ("blue", "green"), ("green", "red"), ("blue", "green", "red")]
    return {present: png_bytes(make_multilabel_image(list(present), rng)) for present in sets}


@pytest.fixture(scope="module")
def multilabel_server(multilabel_classifier):
    """The service around the session's multi-label run (default settings)."""
    from imagerec.server.app import create_app
    from imagerec.settings import ServeSettings

    app = create_app(multilabel_classifier, ServeSettings(max_wait_ms=20))
    with LiveServer(app) as live:
        live.app = app
        yield live
