"""Builders for hostile and awkward images, all generated in code (RELIABILITY B8-B15)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def reference(size: tuple[int, int] = (48, 32)) -> Image.Image:
    """A smooth, asymmetric RGB image (width 48, height 32): every flip and rotation of it is distinguishable."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([x * 255 // (w - 1), y * 255 // (h - 1), np.full_like(x, 60)], axis=-1).astype(np.uint8)
    arr[: h // 4, : w // 4] = (250, 250, 250)  # a bright corner marks the orientation
    return Image.fromarray(arr, "RGB")


def _chunk(kind: bytes, body: bytes) -> bytes:
    return (
        struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    )


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A valid single-colour 1-bit PNG of ``width`` x ``height`` that is only a few hundred KB on disk."""
    row = b"\x00" + bytes((width + 7) // 8)
    comp = zlib.compressobj(9)
    parts = [comp.compress(row) for _ in range(height)]
    idat = b"".join(parts) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def jpeg_claiming(width: int = 60000, height: int = 60000) -> bytes:
    """A tiny real JPEG whose SOF header is patched to claim ``width`` x ``height``."""
    data = bytearray(encode(Image.new("RGB", (8, 8), (200, 10, 10)), "JPEG"))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def gif_claiming(width: int = 32767, height: int = 32767) -> bytes:
    """A tiny real GIF whose logical screen and first image descriptor claim ``width`` x ``height``."""
    data = bytearray(encode(Image.new("P", (8, 8), 3), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)
    desc = data.find(b"\x2c", 13)
    data[desc + 5 : desc + 9] = struct.pack("<HH", width, height)
    return bytes(data)


def png_bad_crc() -> bytes:
    data = bytearray(encode(reference(), "PNG"))
    idat = data.find(b"IDAT")
    length = struct.unpack(">I", data[idat - 4 : idat])[0]
    data[idat + 4 + length] ^= 0xFF  # first CRC byte of IDAT
    return bytes(data)


def jpeg_without_eoi() -> bytes:
    data = encode(reference(), "JPEG", quality=90)
    return data[: len(data) * 2 // 3]


def jpeg_corrupt_exif() -> bytes:
    """A JPEG whose EXIF holds XResolution = 72/0 and an out-of-range Orientation."""
    le = "<"
    entries = [(0x011A, 5, 1, 0), (0x0112, 3, 1, 99)]  # XResolution RATIONAL -> offset, Orientation SHORT 99
    ifd_offset = 8
    data_offset = ifd_offset + 2 + 12 * len(entries) + 4
    body = struct.pack(le + "H", len(entries))
    for tag, kind, count, value in entries:
        if kind == 5:
            body += struct.pack(le + "HHII", tag, kind, count, data_offset)
        else:
            body += struct.pack(le + "HHIHH", tag, kind, count, value, 0)
    body += struct.pack(le + "I", 0) + struct.pack(le + "II", 72, 0)
    tiff = b"II*\x00" + struct.pack(le + "I", ifd_offset) + body
    return encode(reference(), "JPEG", exif=b"Exif\x00\x00" + tiff)


def animated_gif(frames: int = 3000, size: int = 16) -> bytes:
    """A GIF with ``frames`` frames; frame 0 is red, the others are green. Built by repeating one frame block."""
    red = Image.new("RGB", (size, size), (255, 0, 0)).quantize(2)
    green = Image.new("RGB", (size, size), (0, 255, 0)).quantize(2)
    two = encode(red, "GIF", save_all=True, append_images=[green], duration=10, loop=0, disposal=1)
    # find the second frame: graphic control extension (21 F9) that follows the first image
    first_gce = two.find(b"\x21\xf9")
    second_gce = two.find(b"\x21\xf9", first_gce + 2)
    head, frame, tail = two[:second_gce], two[second_gce:-1], two[-1:]
    return head + frame * (frames - 1) + tail


def non_image_corpus() -> dict[str, bytes]:
    """Files that must be refused as ``unsupported_format`` whatever their name says."""
    rng = np.random.default_rng(7)
    ref = reference()
    corpus = {
        "random.jpg": rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "text.jpg": b"This is not an image, it is a text file.\n" * 20,
        "page.png": b"<!DOCTYPE html><html><script>alert(1)</script></html>",
        "vector.png": b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>',
        "eps.png": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",
        "eps_binary.png": b"\xc5\xd0\xd3\xc6" + bytes(60),
        "psd.png": b"8BPS\x00\x01" + bytes(6) + struct.pack(">HIIHH", 3, 8, 8, 8, 3) + bytes(64),
        "fits.png": b"SIMPLE  =                    T" + b" " * 50,
        "pdf.png": encode(ref, "PDF"),
        "ico.png": encode(ref, "ICO"),
        "pcx.jpg": encode(ref, "PCX"),
        "tga.jpg": encode(ref, "TGA"),
        "ppm.jpg": encode(ref, "PPM"),
        "sgi.png": encode(ref, "SGI"),
        "eps_pillow.png": encode(ref, "EPS"),
        "zip.jpg": b"PK\x03\x04" + bytes(40),
    }
    return corpus
