"""Video sources: what a source string means, which ones are refused, and opening them with OpenCV under timeouts.

A source is a video file, a camera index (``0``) or a stream URL (``rtsp://``, ``http://`` MJPEG, ...). FFmpeg, under
OpenCV, understands far more than that: pseudo-protocols (``concat:``, ``subfile:``, ``file:``, ``data:``) and
playlists (``.m3u8``/``.m3u``) that can pull local files into frames (CVE-2016-1897, CVE-2017-9993). So:

* :func:`check_cli_source` — the operator's CLI: any file, camera or stream (local addresses included), but FFmpeg
  pseudo-protocols, unknown URL schemes and playlists are refused unless ``allow_any=True`` (``--allow-any-source``).
* :func:`validate_remote_source` — a source named by a remote party (a request to a server): only ``http``,
  ``https`` and ``rtsp`` URLs whose host resolves to public addresses only (no loopback, private, link-local such as
  the 169.254.169.254 metadata service, multicast or reserved). The server itself never opens a source from a request.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from imagerec.errors import ImagerecError

#: URL schemes the CLI opens without --allow-any-source (network streams an operator names).
STREAM_SCHEMES = frozenset({"http", "https", "rtsp", "rtsps", "rtmp", "rtmps", "rtp", "udp", "srt", "tcp"})
#: URL schemes a remote party may name (validate_remote_source).
REMOTE_SCHEMES = frozenset({"http", "https", "rtsp"})
PLAYLIST_SUFFIXES = (".m3u8", ".m3u", ".pls", ".ffconcat")
#: First bytes of text files FFmpeg would follow as playlists whatever their name.
_PLAYLIST_MAGIC = (b"#EXTM3U", b"ffconcat", b"[playlist]")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")


class VideoError(ImagerecError):
    """A video source or output that cannot be used (refused, unopenable, timed out, unwritable)."""

    code = "bad_video"


@dataclass(frozen=True)
class Source:
    """A parsed source: ``target`` is what OpenCV opens (an ``int`` camera index or a string)."""

    target: int | str
    kind: str  # "file" | "camera" | "stream"

    @property
    def live(self) -> bool:
        return self.kind != "file"

    def __str__(self) -> str:
        return f"camera {self.target}" if self.kind == "camera" else str(self.target)


def parse_source(source: Any) -> Source:
    """Classify ``source`` as a camera index, a stream URL or a file path (no I/O)."""
    if isinstance(source, bool):
        raise VideoError(f"source must be a file, camera index or URL, got {source!r}")
    if isinstance(source, int):
        return Source(source, "camera")
    if isinstance(source, os.PathLike):
        return Source(os.fspath(source), "file")
    if not isinstance(source, str) or not source.strip():
        raise VideoError(f"source must be a file, camera index or URL, got {source!r}")
    text = source.strip()
    if text.isdigit():
        return Source(int(text), "camera")
    match = _SCHEME.match(text)
    if match and len(match.group(1)) > 1:  # one letter: a Windows drive, not a scheme
        return Source(text, "stream")
    return Source(text, "file")


def check_cli_source(source: Any, allow_any: bool = False) -> Source:
    """Parse and check a source named on the command line.

    Raises:
        VideoError: a pseudo-protocol, unknown scheme or playlist (unless ``allow_any``), a missing, empty or
            non-regular file.
    """
    parsed = parse_source(source)
    if parsed.kind == "camera":
        return parsed
    text = str(parsed.target)
    hint = "pass --allow-any-source if you really mean it"
    if parsed.kind == "stream":
        scheme = _SCHEME.match(text).group(1).lower()  # type: ignore[union-attr]
        if not allow_any and scheme not in STREAM_SCHEMES:
            raise VideoError(
                f"source {text[:80]!r}: scheme {scheme!r} is an FFmpeg pseudo-protocol or not a stream; expected a "
                f"file, a camera index or a {'/'.join(sorted(STREAM_SCHEMES))} URL ({hint})"
            )
        if not allow_any and urlsplit(text).path.lower().endswith(PLAYLIST_SUFFIXES):
            raise VideoError(f"source {text[:80]!r}: playlists can reference local files; refused ({hint})")
        return parsed
    path = Path(text)
    if not path.exists():
        raise VideoError(
            f"source {text!r}: no such file; expected a video file, a camera index or a stream URL"
        )
    if not path.is_file():
        raise VideoError(
            f"source {text!r}: not a regular file (a directory or device); expected a video file"
        )
    if path.stat().st_size == 0:
        raise VideoError(f"source {text!r}: empty file (0 bytes); expected a video file")
    if not allow_any:
        with path.open("rb") as fh:
            head = fh.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
        if path.suffix.lower() in PLAYLIST_SUFFIXES or head.startswith(_PLAYLIST_MAGIC):
            raise VideoError(
                f"source {text!r}: a playlist, which can make FFmpeg read other local files; refused ({hint})"
            )
    return parsed


def validate_remote_source(url: str, resolve=socket.getaddrinfo) -> str:
    """Check a stream URL named by a remote party; return it unchanged when it is safe to open.

    Only ``http``, ``https`` and ``rtsp`` URLs whose host resolves to public unicast addresses only are accepted.

    Args:
        url: the URL as received.
        resolve: ``socket.getaddrinfo``-compatible resolver (for tests).

    Returns:
        ``url``.

    Raises:
        VideoError: anything else (other schemes, pseudo-protocols, playlists, loopback/private/link-local/
            multicast/reserved addresses, names that do not resolve).

    Example:
        >>> validate_remote_source("http://169.254.169.254/latest")  # doctest: +SKIP
        VideoError: ... link-local ...
    """
    if not isinstance(url, str) or len(url) > 2048 or any(c in url for c in "\r\n\t\x00 "):
        raise VideoError(
            "stream URL must be one string of at most 2048 characters without spaces or control characters"
        )
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in REMOTE_SCHEMES:
        raise VideoError(
            f"stream URL scheme {scheme or '(none)'!r} refused; expected one of http, https, rtsp"
        )
    host = parts.hostname
    if not host:
        raise VideoError(
            f"stream URL {url[:80]!r} has no host; expected e.g. rtsp://camera.example.com/stream"
        )
    if parts.path.lower().endswith(PLAYLIST_SUFFIXES):
        raise VideoError(
            "stream URL names a playlist, which can point FFmpeg at other hosts or files; refused"
        )
    try:
        port = parts.port
    except ValueError:
        raise VideoError(f"stream URL {url[:80]!r} has an invalid port") from None
    try:
        infos = resolve(host, port or 0, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:
        raise VideoError(
            f"stream host {host!r} does not resolve ({exc}); expected a public host name or address"
        ) from None
    addresses = {info[4][0] for info in infos}
    if not addresses:
        raise VideoError(f"stream host {host!r} resolves to no address")
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if not ip.is_global or ip.is_multicast:
            kind = next(
                (name for name in ("loopback", "unspecified", "link_local", "multicast", "private", "reserved")
                 if getattr(ip, f"is_{name}")), "non-public",
            )  # fmt: skip
            raise VideoError(
                f"stream host {host!r} resolves to {ip} ({kind.replace('_', '-')} address); only public addresses "
                "may be opened on a remote party's behalf"
            )
    return url


# opening ------------------------------------------------------------------------------------------------------
_ENV_LOCK = threading.Lock()
_FFMPEG_OPTIONS = "OPENCV_FFMPEG_CAPTURE_OPTIONS"


def open_capture(source: Source, open_timeout_s: float, read_timeout_s: float):
    """Open ``source`` with OpenCV (FFmpeg backend for files and URLs) with open/read timeouts.

    For URLs FFmpeg's ``protocol_whitelist`` excludes ``file``, ``concat``, ``subfile``, ``data`` and friends, so a
    stream cannot redirect FFmpeg to local files either (unless the user set ``OPENCV_FFMPEG_CAPTURE_OPTIONS``).

    Returns:
        An opened ``cv2.VideoCapture``.

    Raises:
        VideoError: it did not open.
    """
    cv2 = import_cv2()
    params = [
        cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, max(1, int(open_timeout_s * 1000)),
        cv2.CAP_PROP_READ_TIMEOUT_MSEC, max(1, int(read_timeout_s * 1000)),
    ]  # fmt: skip
    if source.kind == "camera":
        cap = cv2.VideoCapture(source.target, cv2.CAP_ANY, params)
    else:
        with _ENV_LOCK:
            previous = os.environ.get(_FFMPEG_OPTIONS)
            if previous is None and source.kind == "stream":
                os.environ[_FFMPEG_OPTIONS] = (
                    "protocol_whitelist;http,https,tcp,tls,rtp,rtsp,rtsps,rtmp,rtmps,udp,srt,crypto,httpproxy"
                )
            try:
                cap = cv2.VideoCapture(str(source.target), cv2.CAP_FFMPEG, params)
            finally:
                if previous is None:
                    os.environ.pop(_FFMPEG_OPTIONS, None)
    if not cap.isOpened():
        cap.release()
        what = {
            "camera": "no such camera, or it is busy",
            "file": "not a video file OpenCV/FFmpeg can decode",
            "stream": f"unreachable, refused, or no frames within {open_timeout_s:g} s",
        }[source.kind]
        raise VideoError(f"cannot open video source {source}: {what}")
    return cap


def import_cv2():
    """OpenCV, with its own and FFmpeg's log lines silenced (errors reach the user as one line each)."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET; read by OpenCV's FFmpeg backend
    try:
        import cv2
    except ImportError:  # pragma: no cover - depends on the install
        raise VideoError(
            "video needs OpenCV: pip install 'imagerec[video]' (opencv-python-headless)"
        ) from None
    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    except AttributeError:  # pragma: no cover
        pass
    return cv2
