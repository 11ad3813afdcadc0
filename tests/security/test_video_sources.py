"""RELIABILITY D25-D26: hostile stream sources are refused at validation; a dead stream times out."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from imagerec.video.sources import (
    VideoError,
    check_cli_source,
    open_capture,
    validate_remote_source,
)

REMOTE_HOSTILE = [
    "file:///etc/passwd",
    "concat:/etc/passwd|/etc/shadow",
    "subfile:,,start,0,end,0,,:/etc/passwd",
    "data:text/plain;base64,aGVsbG8=",
    "http://169.254.169.254/latest/meta-data/",
    "rtsp://127.0.0.1/stream",
    "http://[::1]/x",
    "http://10.0.0.5/cam",
    "http://0.0.0.0/",
    "https://example.com/list.m3u8",
    "gopher://example.com/",
    "http://exa mple.com/",
]


@pytest.mark.parametrize("url", REMOTE_HOSTILE)
def test_d25_remote_sources_are_refused_at_validation(url):
    def resolve(host, port, proto=0):  # no DNS in tests: names map to a public address
        import ipaddress

        try:
            ipaddress.ip_address(host)
            address = host
        except ValueError:
            address = "93.184.216.34"
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        return [(family, socket.SOCK_STREAM, proto, "", (address, port))]

    with pytest.raises(VideoError):
        validate_remote_source(url, resolve=resolve)


def test_d25_cli_refuses_pseudo_protocols_and_playlists_unless_allowed(tmp_path):
    playlist = tmp_path / "list.m3u8"
    playlist.write_text("#EXTM3U\n#EXTINF:1,\nfile:///etc/passwd\n")
    disguised = tmp_path / "movie.mp4"
    disguised.write_text("#EXTM3U\nfile:///etc/passwd\n")
    for source in (
        "concat:/etc/passwd",
        "subfile:,,start,0,end,0,,:/etc/passwd",
        "file:///etc/passwd",
        playlist,
        disguised,
    ):
        with pytest.raises(VideoError, match="allow-any-source"):
            check_cli_source(source)
    assert check_cli_source(playlist, allow_any=True).kind == "file"
    assert (
        check_cli_source("rtsp://127.0.0.1:8554/cam").kind == "stream"
    )  # the operator may name local cameras


def test_d26_stream_that_accepts_then_never_sends_times_out(tmp_path):
    """A TCP endpoint that accepts the connection and then stays silent: opening fails within the timeout."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    port = server.getsockname()[1]
    held = []

    def accept_and_hang():
        server.settimeout(15)
        try:
            while True:
                conn, _ = server.accept()
                held.append(conn)  # never answer
        except OSError:
            pass

    threading.Thread(target=accept_and_hang, daemon=True).start()
    source = check_cli_source(f"rtsp://127.0.0.1:{port}/stream")
    start = time.perf_counter()
    try:
        with pytest.raises(VideoError, match="within 2 s"):
            open_capture(source, open_timeout_s=2.0, read_timeout_s=2.0)
        elapsed = time.perf_counter() - start
    finally:
        server.close()
        for conn in held:
            conn.close()
    assert held, "the client never connected: the test did not exercise a hanging endpoint"
    assert elapsed < 8.0, elapsed
