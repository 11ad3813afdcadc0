"""The bytes between the server and its decode processes (``server/decoding.py``): no pickle either way.

A batch of uploads goes out as length-prefixed byte strings. Each result comes back as ``A`` + height, width,
channels + the pixels, or ``R`` (rejected) / ``E`` (any other error) + code + message. :func:`unpack_results` checks
every field against the batch it answers, so a worker taken over by a hostile image can make the server do nothing
but fail that batch. Frames travel in ``multiprocessing.Connection.send_bytes``' framing (:data:`FRAME`).

Imported by the worker processes: keep its top-level imports light.
"""

from __future__ import annotations

import struct
from typing import Any


class Failure:
    """An exception in the worker, passed back as plain data: a kind, a code and a message."""

    def __init__(self, kind: str, code: str, message: str):
        self.kind, self.code, self.message = kind, code, message


_BLOB = struct.Struct("<I")  # the length of each upload of a batch
_PIXELS = struct.Struct("<III")  # height, width, channels of a decoded upload
_ERROR = struct.Struct("<II")  # lengths of an error's code and message
#: multiprocessing.Connection.send_bytes' length prefix (-1: a 64-bit length follows)
FRAME = struct.Struct("!i")


def pack_blobs(blobs: list[bytes]) -> bytes:
    return b"".join(part for blob in blobs for part in (_BLOB.pack(len(blob)), blob))


def unpack_blobs(payload: bytes) -> list[bytes]:
    blobs, pos = [], 0
    while pos < len(payload):
        (size,) = _BLOB.unpack_from(payload, pos)
        blobs.append(payload[pos + 4 : pos + 4 + size])
        pos += 4 + size
    return blobs


def pack_results(results: list[Any]) -> bytes:
    """Each result as ``A`` + shape + pixels, or ``R``/``E`` (rejected / other error) + code + message."""
    parts = []
    for result in results:
        if isinstance(result, Failure):
            code = result.code.encode("ascii", errors="replace")[:64]
            message = result.message.encode(errors="replace")[:4000]
            kind = b"R" if result.kind == "rejected" else b"E"
            parts += [kind, _ERROR.pack(len(code), len(message)), code, message]
        else:
            array = result if result.ndim == 3 else result[:, :, None]
            parts += [b"A", _PIXELS.pack(*array.shape), array.tobytes()]
    return b"".join(parts)


class BadReply(Exception):
    """A worker's answer that does not parse as the framing, or does not fit its batch."""


def unpack_results(payload: bytearray, count: int, shape: tuple[int, int, int]) -> list[Any]:
    """The ``count`` results of a worker's answer; every array must have ``shape``.

    Raises:
        BadReply: anything else (a worker taken over by a hostile image can send any bytes).
    """
    import numpy as np

    results, pos, view = [], 0, memoryview(payload)
    size = shape[0] * shape[1] * shape[2]
    try:
        while pos < len(payload):
            kind = bytes(view[pos : pos + 1])
            if kind == b"A":
                if tuple(_PIXELS.unpack_from(payload, pos + 1)) != shape or pos + 13 + size > len(payload):
                    raise BadReply("an array of the wrong shape or size")
                pos += 1 + _PIXELS.size
                results.append(np.frombuffer(view[pos : pos + size], np.uint8).reshape(shape))
                pos += size
            elif kind in (b"R", b"E"):
                code_len, message_len = _ERROR.unpack_from(payload, pos + 1)
                pos += 1 + _ERROR.size
                if code_len > 64 or message_len > 4096 or pos + code_len + message_len > len(payload):
                    raise BadReply("an error of the wrong size")
                code = bytes(view[pos : pos + code_len]).decode("ascii")
                message = bytes(view[pos + code_len : pos + code_len + message_len]).decode(errors="replace")
                results.append(Failure("rejected" if kind == b"R" else "error", code, message))
                pos += code_len + message_len
            else:
                raise BadReply(f"unknown result kind {kind!r}")
    except (struct.error, ValueError) as exc:
        raise BadReply(str(exc)) from None
    if len(results) != count:
        raise BadReply(f"{len(results)} results for {count} uploads")
    return results
