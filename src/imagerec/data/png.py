"""PNG byte checks shared by every decode, and the one-call decode of a *plain* PNG.

:func:`check_chunks` walks the chunks of a PNG and verifies every CRC (Pillow skips the IDAT CRCs): ``open_image``
runs it before Pillow decodes. :func:`plain_png` / :func:`decode_plain_png`: an 8-bit grey or RGB PNG that is already
the model's size and carries nothing that changes pixels is decoded by OpenCV in one call, with exactly Pillow's
pixels (PNG is lossless); ``load_image`` and the server use it for small uploads (see ``imagerec.data.images``).
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

import numpy as np

from imagerec.errors import ImageRejected


def check_chunks(data: bytes, name: str, max_chunks: int) -> set[bytes]:
    """Verify every PNG chunk's CRC up to IEND (Pillow skips the IDAT CRCs); a cheap pass over the bytes.

    Returns the chunk types seen.

    Raises:
        ImageRejected: ``truncated`` or ``corrupt`` (a bad CRC, more than ``max_chunks`` chunks).
    """
    pos = 8
    kinds = set()
    for _ in range(max_chunks):
        if pos + 12 > len(data):
            raise ImageRejected("truncated", f"{name}: PNG ends before its IEND chunk (truncated file)")
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 8 + length
        if end + 4 > len(data):
            raise ImageRejected(
                "truncated", f"{name}: PNG chunk {kind!r} runs past the end of the file (truncated)"
            )
        if zlib.crc32(data[pos + 4 : end]) & 0xFFFFFFFF != struct.unpack(">I", data[end : end + 4])[0]:
            raise ImageRejected("corrupt", f"{name}: PNG chunk {kind!r} fails its CRC check (corrupt file)")
        kinds.add(kind)
        if kind == b"IEND":
            return kinds
        pos = end + 4
    raise ImageRejected("corrupt", f"{name}: PNG has more than {max_chunks} chunks")


#: Chunks that change no pixel in Pillow or OpenCV (no transparency, palette, gamma, colour profile or EXIF).
_PLAIN_PNG_CHUNKS = frozenset({b"IHDR", b"IDAT", b"IEND", b"pHYs", b"sRGB", b"tIME"})
_PLAIN_MAX_CHUNKS = 64  # a plain file has a handful; the CRC walk of a crafted one stays short
_cv2: Any = None


def plain_png(
    data: bytes, image_size: tuple[int, int] | None, channels: int, max_pixels: int, max_bytes: int
) -> bool:
    """Whether ``data`` is a plain PNG for a model of ``image_size`` x ``channels`` (checks the bytes, decodes nothing).

    Plain: 8-bit grey with ``channels == 1`` or 8-bit RGB with ``channels == 3``, not interlaced, already
    ``image_size``, within ``max_pixels``, no larger than its pixels stored uncompressed (+1%, +1 KB: deflate's
    worst case), at most 64 chunks, only :data:`_PLAIN_PNG_CHUNKS`, every CRC right: the checks cost time
    proportional to the picture, never to what an attacker appends. Such a file is
    decoded by OpenCV in one call (:func:`decode_plain_png`, :func:`load_image`); the server decodes a tiny one on
    its event loop even with ``--decode-workers`` (server/app.py): libpng on a checked, chunk-minimal file of the
    model's own size is the narrowest decode there is, and the round trip to a process cost more than the decode.
    """
    if data[:8] != b"\x89PNG\r\n\x1a\n" or len(data) < 33 or data[12:16] != b"IHDR":
        return False
    width, height, depth, colour, method, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if depth != 8 or (colour, channels) not in ((0, 1), (2, 3)) or interlace != 0 or method != 0:
        return False
    if image_size is not None and (height, width) != tuple(image_size):
        return False
    if not 0 < width * height <= max_pixels:
        return False  # open_image words the refusal
    if len(data) > min(height * (width * channels + 1) * 1.01 + 1024, max_bytes):
        return False
    try:
        return check_chunks(data, "", _PLAIN_MAX_CHUNKS) <= _PLAIN_PNG_CHUNKS
    except ImageRejected:
        return False


def decode_plain_png(
    data: bytes, image_size: tuple[int, int] | None, channels: int, max_pixels: int, max_bytes: int
) -> np.ndarray | None:
    """The model's array of a :func:`plain_png`, decoded by OpenCV in one call; None for anything else.

    PNG is lossless, so the pixels are exactly Pillow's (the tests compare both paths), at ~15 us instead of
    ~130 us for a 28x28 upload, mostly outside the GIL. Anything else, an error included, returns None and goes
    through :func:`open_image`, which decides and words every rejection.
    """
    if not plain_png(data, image_size, channels, max_pixels, max_bytes):
        return None
    cv2 = warm_up()
    if cv2 is None:
        return None
    width, height = struct.unpack(">II", data[16:24])
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.shape[:2] != (height, width) or arr.dtype != np.uint8:
        return None
    if channels == 1:
        return arr.reshape(height, width, 1)
    return np.ascontiguousarray(arr[:, :, ::-1])  # OpenCV's BGR -> RGB


def warm_up() -> Any:
    """Import the plain-PNG decoder (OpenCV) now, not on the first upload; returns it (None: not installed)."""
    global _cv2
    if _cv2 is None:
        try:
            import cv2
        except ImportError:  # OpenCV is optional (the video extra): Pillow decodes everything
            cv2 = False
        _cv2 = cv2
    return _cv2 or None
