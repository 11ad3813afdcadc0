"""Real video inputs built at test time: clips written with OpenCV, a local MJPEG-over-HTTP server, a silent server."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from imagefixtures import COLOURS, make_image


def colour_frame(colour: str, rng: np.random.Generator, size: tuple[int, int] = (64, 48)) -> np.ndarray:
    """A BGR frame (width, height = ``size``) of one colour class, upscaled from a 32x32 ``make_image``."""
    import cv2

    rgb = make_image(COLOURS[colour], rng, 32)
    return cv2.cvtColor(cv2.resize(rgb, size, interpolation=cv2.INTER_NEAREST), cv2.COLOR_RGB2BGR)


def write_clip(
    path: Path, labels: Sequence[str], fps: float = 30.0, size: tuple[int, int] = (64, 48), seed: int = 0
) -> Path:
    """An MP4 (mp4v) with one frame per entry of ``labels``; returns ``path``."""
    import cv2

    rng = np.random.default_rng(seed)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    assert writer.isOpened()
    for label in labels:
        writer.write(colour_frame(label, rng, size))
    writer.release()
    return path


def held(colours: Sequence[str], frames_each: int) -> list[str]:
    """Each colour held for ``frames_each`` frames."""
    return [c for c in colours for _ in range(frames_each)]


def read_frames(path: Path) -> tuple[int, float, tuple[int, int]]:
    """(frame count by decoding, fps, (width, height)) of a video file."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), path
    fps = cap.get(cv2.CAP_PROP_FPS)
    count, size = 0, (0, 0)
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        count += 1
        size = (frame.shape[1], frame.shape[0])
    cap.release()
    return count, fps, size


@contextmanager
def mjpeg_server(
    colour: str, frames: int = 45, fps: float = 30.0, connections: int | None = None, hang: bool = False
) -> Iterator[str]:
    """Serve ``frames`` JPEG frames of ``colour`` as ``multipart/x-mixed-replace`` on 127.0.0.1; yields the URL.

    After ``connections`` connections (None: no limit) it answers 404, like a camera that went away. With ``hang``
    it goes silent instead: each connection stays open without another byte after its frames, and the connections
    after ``connections`` are accepted and never answered (a stream that stalls mid-stream, then a dead endpoint).
    """
    served = []
    released = threading.Event()
    import cv2

    rng = np.random.default_rng(3)
    jpegs = [cv2.imencode(".jpg", colour_frame(colour, rng))[1].tobytes() for _ in range(frames)]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            served.append(1)
            if connections is not None and len(served) > connections:
                if hang:
                    released.wait()
                else:
                    self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.end_headers()
            try:
                for data in jpegs:
                    self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\n")
                    self.wfile.write(f"Content-Length: {len(data)}\r\n\r\n".encode() + data + b"\r\n")
                    self.wfile.flush()
                    time.sleep(1.0 / fps)
                if hang:
                    released.wait()
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/stream.mjpg"
    finally:
        released.set()
        server.shutdown()
        server.server_close()


@contextmanager
def silent_server() -> Iterator[int]:
    """A TCP server on 127.0.0.1 that accepts connections and never sends a byte; yields its port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    held_conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                held_conns.append(sock.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        stop.set()
        thread.join(2)
        for conn in held_conns:
            conn.close()
        sock.close()
