"""Source parsing and refusal rules of imagerec video (RELIABILITY D 25): no TensorFlow needed."""

from __future__ import annotations

import socket

import pytest

from imagerec.video.sources import (
    VideoError,
    check_cli_source,
    parse_source,
    validate_remote_source,
)


@pytest.mark.parametrize(
    ("text", "kind", "target"),
    [("0", "camera", 0), (" 2 ", "camera", 2), ("rtsp://cam/stream", "stream", "rtsp://cam/stream"),
     ("clip.mp4", "file", "clip.mp4"), ("C:/videos/a.mp4", "file", "C:/videos/a.mp4")],
)  # fmt: skip
def test_parse_source(text, kind, target):
    parsed = parse_source(text)
    assert (parsed.kind, parsed.target) == (kind, target)
    assert parsed.live == (kind != "file")


@pytest.mark.parametrize(
    "source",
    ["concat:/etc/passwd|/etc/hosts", "subfile:,,start,0,end,0,,:/etc/passwd", "file:///etc/passwd",
     "data:video/mp4;base64,AAAA", "pipe:0", "gopher://x/", "http://example.com/live.m3u8", "https://x/y.M3U"],
)  # fmt: skip
def test_cli_refuses_pseudo_protocols_and_playlists(source):
    with pytest.raises(VideoError, match="allow-any-source"):
        check_cli_source(source)
    assert check_cli_source(source, allow_any=True).kind == "stream"


def test_cli_refuses_local_playlists_whatever_their_name(tmp_path):
    named = tmp_path / "list.m3u8"
    named.write_text("#EXTM3U\n#EXTINF:1,\nfile:///etc/passwd\n")
    disguised = tmp_path / "clip.mp4"
    disguised.write_text("#EXTM3U\n#EXTINF:1,\n/etc/passwd\n")
    concat = tmp_path / "movie.avi"
    concat.write_text("ffconcat version 1.0\nfile /etc/passwd\n")
    for path in (named, disguised, concat):
        with pytest.raises(VideoError, match="playlist"):
            check_cli_source(str(path))


def test_cli_file_checks(tmp_path):
    with pytest.raises(VideoError, match="no such file"):
        check_cli_source(str(tmp_path / "missing.mp4"))
    empty = tmp_path / "empty.mp4"
    empty.touch()
    with pytest.raises(VideoError, match=r"empty file \(0 bytes\)"):
        check_cli_source(str(empty))
    with pytest.raises(VideoError, match="not a regular file"):
        check_cli_source(str(tmp_path))
    assert check_cli_source("0").kind == "camera"
    assert (
        check_cli_source("rtsp://127.0.0.1:8554/cam").kind == "stream"
    )  # the operator may name local streams


@pytest.mark.parametrize(
    ("url", "why"),
    [("http://169.254.169.254/latest/meta-data/", "link-local"), ("rtsp://127.0.0.1/cam", "loopback"),
     ("http://localhost:8080/x", "loopback"), ("http://[::1]/x", "loopback"), ("http://10.0.0.7/cam", "private"),
     ("http://192.168.1.2/cam", "private"), ("http://[::ffff:127.0.0.1]/x", "loopback"), ("http://0.0.0.0/", "unspecified"),
     ("http://224.0.0.1/", "multicast"), ("file:///etc/passwd", "scheme"), ("concat:/etc/passwd", "scheme"),
     ("ftp://8.8.8.8/x", "scheme"), ("http:///nohost", "no host"), ("https://8.8.8.8/live.m3u8", "playlist"),
     ("http://8.8.8.8/a b", "spaces"), ("http://no-such-host.invalid/x", "does not resolve")],
)  # fmt: skip
def test_validate_remote_source_refuses(url, why):
    with pytest.raises(VideoError, match=why):
        validate_remote_source(url)


def test_validate_remote_source_accepts_public_hosts():
    assert validate_remote_source("rtsp://8.8.8.8:554/cam") == "rtsp://8.8.8.8:554/cam"
    assert (
        validate_remote_source("https://[2001:4860:4860::8888]/mjpeg")
        == "https://[2001:4860:4860::8888]/mjpeg"
    )


def test_validate_remote_source_checks_every_resolved_address():
    """A name that resolves to one public and one private address (DNS rebinding style) is refused."""

    def resolve(host, port, proto=0):
        return [(socket.AF_INET, socket.SOCK_STREAM, proto, "", (ip, port)) for ip in ("8.8.8.8", "10.1.2.3")]

    with pytest.raises(VideoError, match="10.1.2.3 .private"):
        validate_remote_source("http://camera.example.com/x", resolve=resolve)
