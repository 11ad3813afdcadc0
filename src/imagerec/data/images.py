"""The one decode function of imagerec: training, prediction, serving and video all go through it.

Rules (documented in docs/security.md, tested in ``tests/data/test_images.py`` and ``tests/security/``):

* Formats are decided by magic bytes, never by file name or Content-Type: JPEG, PNG, BMP, GIF, WebP, TIFF, each
  opened with ``Image.open(..., formats=[that one])``.
* Bounded before any pixel is decoded: the encoded size (``IMAGEREC_MAX_FILE_BYTES``, 100 MB), then width x height
  from our own header parse (PNG, GIF, BMP, JPEG SOF) and again from Pillow's (every format) against
  ``IMAGEREC_MAX_PIXELS`` (40 MP). Pillow's own ``MAX_IMAGE_PIXELS`` guard is re-armed on every call.
* PNG chunk CRCs are verified (Pillow skips IDAT's); truncated files are refused (``LOAD_TRUNCATED_IMAGES`` off).
* Animated images: the first frame only (nothing seeks, whatever the frame count).
* EXIF orientation is applied; a corrupt EXIF block is ignored.
* Modes: 16-bit keeps its high byte (v >> 8, so 65535 -> 255: scaled, never clipped; Pillow does the same
  for 16-bit RGB PNGs); alpha and palette transparency are composited on a white background; CMYK, YCbCr, LAB,
  1-bit, palette are converted by Pillow; the result is ``L`` (channels=1, ITU-R 601 luma) or ``RGB``.
* Resize policy (``stretch`` | ``pad`` | ``crop``): stretch to the square size, keep the aspect and pad with the
  background, or keep the aspect and centre-crop. Bilinear with antialiasing (Pillow ``reduce`` + ``BILINEAR``).
* Output: ``uint8`` array ``(H, W, C)``; models rescale inside themselves.
* Failures: only :class:`~imagerec.errors.ImageRejected` (stable ``code``) leaves the decoder, whatever the bytes.
"""

from __future__ import annotations

import io
import logging
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from imagerec.data import png
from imagerec.errors import ImageRejected

ALLOWED_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF")
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
)
RESIZE_POLICIES = ("stretch", "pad", "crop")
logger = logging.getLogger(__name__)
BACKGROUND = 255  # alpha is composited on white

#: Our own ceiling on width*height, lower than Pillow's. Override with IMAGEREC_MAX_PIXELS.
DEFAULT_MAX_PIXELS = int(os.environ.get("IMAGEREC_MAX_PIXELS", 40_000_000))
#: Ceiling on the encoded size of one image. Override with IMAGEREC_MAX_FILE_BYTES.
DEFAULT_MAX_FILE_BYTES = int(os.environ.get("IMAGEREC_MAX_FILE_BYTES", 100 << 20))
MAX_PNG_CHUNKS = 100_000
#: Pillow's own bomb guard stays on (never None); ours is stricter and checked first, on our own header parse.
PILLOW_MAX_PIXELS = max(DEFAULT_MAX_PIXELS, 89_478_485)
Image.MAX_IMAGE_PIXELS = PILLOW_MAX_PIXELS
ImageFile.LOAD_TRUNCATED_IMAGES = False

_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"BM", 0, "BMP"),
    (b"GIF87a", 0, "GIF"),
    (b"GIF89a", 0, "GIF"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
)

#: Exceptions a hostile file may raise inside Pillow; all become ImageRejected. Anything else is a bug.
_DECODE_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
    struct.error,
    Image.DecompressionBombError,
    MemoryError,
)


def sniff_format(head: bytes) -> str | None:
    """Return the image format named by the first bytes, or None when it is not an allowed format."""
    for magic, offset, name in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def _read_source(source: Any, limit: int) -> tuple[bytes, str]:
    """Bytes of ``source`` (path, bytes, file object), at most ``limit`` of them, and a short name for messages."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, name = bytes(source), "<bytes>"
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        name = str(path)
        try:
            if path.exists() and not path.is_dir() and not path.is_file():
                raise ImageRejected("unreadable", f"{path}: not a regular file (a device, FIFO or socket)")
            with open(path, "rb") as fh:
                data = fh.read(limit + 1)
        except IsADirectoryError:
            raise ImageRejected("unreadable", f"{path}: is a directory, not an image file") from None
        except OSError as exc:
            raise ImageRejected("unreadable", f"{path}: cannot read file ({exc.strerror or exc})") from None
    elif hasattr(source, "read"):
        data, name = source.read(limit + 1), str(getattr(source, "name", "<stream>"))
        if not isinstance(data, (bytes, bytearray)):
            raise ImageRejected(
                "unreadable",
                f"{name}: the stream gave {type(data).__name__}, expected bytes (open it in 'rb' mode)",
            )
        data = bytes(data)
    else:
        raise TypeError(f"expected a path, bytes or a file object, got {type(source).__name__}")
    if len(data) > limit:
        raise ImageRejected(
            "image_too_large",
            f"{name}: file is larger than the limit of {limit} bytes (set IMAGEREC_MAX_FILE_BYTES)",
        )
    return data, name


def header_size(data: bytes, fmt: str) -> tuple[int, int] | None:
    """(width, height) read straight from the header bytes of a PNG, GIF, BMP or JPEG, or None if not found.

    This runs before Pillow parses anything, so a header that claims a huge canvas is refused without any
    allocation, whatever Pillow's own guard is set to.
    """
    try:
        if fmt == "PNG" and data[12:16] == b"IHDR":
            return struct.unpack(">II", data[16:24])
        if fmt == "GIF":
            return struct.unpack("<HH", data[6:10])
        if fmt == "BMP" and len(data) >= 26:
            header = struct.unpack("<I", data[14:18])[0]
            if header == 12:
                return struct.unpack("<HH", data[18:22])
            width, height = struct.unpack("<ii", data[18:26])
            return abs(width), abs(height)
        if fmt == "JPEG":
            return _jpeg_size(data)
    except struct.error:
        return None
    return None


_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Walk the JPEG marker segments up to the first SOF; never more than the file (each step advances)."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # standalone markers
            pos += 2
            continue
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        if marker in _SOF_MARKERS and pos + 9 <= len(data):
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return width, height
        if length < 2:
            return None
        pos += 2 + length
    return None


def _enforce_pillow_guards() -> None:
    # Another library in the process may have switched Pillow's guards off; imagerec never runs without them.
    if Image.MAX_IMAGE_PIXELS is None or Image.MAX_IMAGE_PIXELS > PILLOW_MAX_PIXELS:
        Image.MAX_IMAGE_PIXELS = PILLOW_MAX_PIXELS
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        ImageFile.LOAD_TRUNCATED_IMAGES = False


def _check_pixels(name: str, size: tuple[int, int], limit: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageRejected("corrupt", f"{name}: image declares size {width}x{height}")
    if width * height > limit:
        raise ImageRejected(
            "image_too_large",
            f"{name}: {width}x{height} = {width * height} pixels exceeds the limit of {limit} "
            "(resize it, or raise IMAGEREC_MAX_PIXELS)",
        )


def open_image(
    source: Any, *, max_pixels: int | None = None, max_bytes: int | None = None, info: dict | None = None
) -> Image.Image:
    """Open and fully decode one image under imagerec's rules, returning a Pillow image in ``L`` or ``RGB``.

    Args:
        source: a path, ``bytes`` or a binary file object.
        max_pixels: ceiling on width*height checked on the header before decoding (default
            ``DEFAULT_MAX_PIXELS``).
        max_bytes: ceiling on the encoded size (default ``DEFAULT_MAX_FILE_BYTES``).
        info: when given, receives the file's ``format`` and original ``mode`` (before the conversion).

    Raises:
        ImageRejected: with ``code`` ``empty``, ``unsupported_format``, ``image_too_large``, ``truncated``,
            ``corrupt`` or ``unreadable``. No other exception escapes for any input bytes.
    """
    _enforce_pillow_guards()
    data, name = _read_source(source, DEFAULT_MAX_FILE_BYTES if max_bytes is None else max_bytes)
    if not data:
        raise ImageRejected("empty", f"{name}: empty file (0 bytes)")
    fmt = sniff_format(data[:16])
    if fmt is None:
        raise ImageRejected(
            "unsupported_format",
            f"{name}: not a supported image (JPEG, PNG, BMP, GIF, WebP, TIFF), decided by content",
        )
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    declared = header_size(data, fmt)
    if declared is not None:
        _check_pixels(name, declared, limit)
    if fmt == "PNG":
        png.check_chunks(data, name, MAX_PNG_CHUNKS)
    try:
        img = Image.open(io.BytesIO(data), formats=[fmt])
        _check_pixels(name, img.size, limit)
        if info is not None:
            info.update(format=img.format or fmt, mode=img.mode)
        img.load()  # the first frame only: Image.open stands on frame 0 and nothing here seeks
        img = _apply_exif(img)
        return _normalise_mode(img)
    except ImageRejected:
        raise
    except UnidentifiedImageError:
        raise ImageRejected("corrupt", f"{name}: cannot identify image data ({fmt} header)") from None
    except Exception as exc:  # noqa: BLE001 - hostile bytes: only ImageRejected may leave the decoder
        if not isinstance(exc, _DECODE_ERRORS):
            logger.warning("unexpected %s from Pillow while decoding %s: %s", type(exc).__name__, name, exc)
        text = str(exc) or type(exc).__name__
        code = "truncated" if "truncated" in text.lower() else "corrupt"
        if isinstance(exc, (Image.DecompressionBombError, MemoryError)):
            code = "image_too_large"
        raise ImageRejected(code, f"{name}: {text[:300]}") from None


def _apply_exif(img: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(img) or img
    except Exception:  # noqa: BLE001 - a corrupt EXIF block must not reject an otherwise valid image
        return img


def _normalise_mode(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to ``L`` or ``RGB`` (documented rules above)."""
    mode = img.mode
    if mode in ("L", "RGB"):
        return img
    if mode.startswith("I;16"):
        # 16-bit keeps its high byte (v >> 8): scaled, never clipped, and the same rule Pillow applies to
        # 16-bit RGB PNGs, so grey and colour 16-bit sources agree.
        arr = np.asarray(img).astype(np.uint16, copy=False)
        return Image.fromarray((arr >> 8).astype(np.uint8), mode="L")
    if mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 / 65535.0 if mode != "F" or arr.max(initial=0) > 1.0 else 255.0
        arr = np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L")
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (BACKGROUND,) * 3 + (255,))
        composite = Image.alpha_composite(background, rgba)
        return composite.convert("L" if mode in ("LA", "La") else "RGB")
    if mode == "1":
        return img.convert("L")
    if mode == "CMYK" and img.info.get("adobe_transform") is not None and img.format == "JPEG":
        return img.convert("RGB")
    return img.convert("RGB")


def fit_size(img: Image.Image, image_size: tuple[int, int], policy: str = "stretch") -> Image.Image:
    """Resize ``img`` to ``image_size`` = (height, width) under ``policy``."""
    height, width = image_size
    if img.size == (width, height):
        return img
    if policy == "stretch":
        return img.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=2.0)
    if policy == "crop":
        return ImageOps.fit(img, (width, height), Image.Resampling.BILINEAR)
    if policy == "pad":
        fill = BACKGROUND if img.mode == "L" else (BACKGROUND,) * 3
        return ImageOps.pad(img, (width, height), Image.Resampling.BILINEAR, color=fill)
    raise ValueError(f"unknown resize policy {policy!r}; expected one of {', '.join(RESIZE_POLICIES)}")


def to_array(img: Image.Image, channels: int) -> np.ndarray:
    """A ``uint8`` array ``(H, W, channels)`` from an ``L``/``RGB`` image."""
    if channels == 1:
        arr = np.asarray(img.convert("L") if img.mode != "L" else img, dtype=np.uint8)
        return arr[:, :, None]
    if channels == 3:
        return np.asarray(img.convert("RGB") if img.mode != "RGB" else img, dtype=np.uint8)
    raise ValueError(f"channels must be 1 or 3, got {channels}")


def load_image(
    source: Any,
    image_size: tuple[int, int] | None = None,
    channels: int = 3,
    resize: str = "stretch",
    max_pixels: int | None = None,
) -> np.ndarray:
    """Decode ``source`` into the exact ``uint8`` tensor a model sees (the train/serve contract).

    Args:
        source: a path, bytes, file object, PIL image or ``uint8`` numpy array (H, W[, C]).
        image_size: (height, width) to resize to, or None to keep the decoded size.
        channels: 1 or 3.
        resize: ``stretch``, ``pad`` or ``crop``.
        max_pixels: header pixel ceiling.

    Returns:
        ``np.ndarray`` of dtype uint8 and shape (H, W, channels).

    Raises:
        ImageRejected: the source is not a decodable, allowed image.
    """
    if (
        isinstance(source, bytes)
        and (plain := decode_plain_png(source, image_size, channels, max_pixels)) is not None
    ):
        return plain
    if isinstance(source, np.ndarray):
        img = _array_to_image(source)
    elif isinstance(source, Image.Image):
        img = _normalise_mode(_apply_exif(source))
    else:
        img = open_image(source, max_pixels=max_pixels)
    if image_size is not None:
        img = fit_size(img, tuple(image_size), resize)
    return to_array(img, channels)


def decode_plain_png(
    data: bytes, image_size: tuple[int, int] | None, channels: int, max_pixels: int | None = None
) -> np.ndarray | None:
    """:func:`imagerec.data.png.decode_plain_png` under imagerec's limits (``max_pixels``, the file size)."""
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    return png.decode_plain_png(data, image_size, channels, limit, DEFAULT_MAX_FILE_BYTES)


def _array_to_image(arr: np.ndarray) -> Image.Image:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and arr.size and float(np.nanmax(arr)) <= 1.0:
            arr = arr * 255.0
        arr = np.clip(np.nan_to_num(arr), 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        return Image.fromarray(arr, mode="L")
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        return _normalise_mode(Image.fromarray(arr, mode="RGB" if arr.shape[2] == 3 else "RGBA"))
    raise ImageRejected("corrupt", f"array of shape {arr.shape} is not an image (H, W[, 1|3|4])")


def image_info(path: str | os.PathLike) -> dict[str, Any]:
    """Header facts for the scan: format, size, mode, frames (cheap: no full decode, allowed formats only)."""
    with Image.open(path, formats=list(ALLOWED_FORMATS)) as img:
        return {
            "format": img.format,
            "size": img.size,
            "mode": img.mode,
            "frames": getattr(img, "n_frames", 1),
        }


DecodeFn = Callable[[Any], np.ndarray]
