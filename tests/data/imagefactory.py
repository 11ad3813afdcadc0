"""Every kind of good and bad image file, generated at test time (no fixture files in the repository).

Also the fixtures of the data-stage tests (``messy``, ``cli``): test modules import them by name. They live here,
not in ``tests/data/conftest.py``, because a second module named ``conftest`` would shadow ``tests/conftest.py``
for the other test folders that do ``from imagefixtures import ...``.
"""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def picture(seed: int, size: int = 64) -> np.ndarray:
    """A smooth colour picture (a random 4x4 colour grid, upsampled): distinct per seed, robust to re-encoding."""
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(grid).resize((size, size), Image.Resampling.BICUBIC))


def encode(arr_or_img, fmt: str = "PNG", **params) -> bytes:
    img = arr_or_img if isinstance(arr_or_img, Image.Image) else Image.fromarray(arr_or_img)
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def png(seed: int, size: int = 64) -> bytes:
    return encode(picture(seed, size), "PNG")


def jpeg(seed: int, size: int = 64, quality: int = 92) -> bytes:
    return encode(picture(seed, size), "JPEG", quality=quality)


def exif_rotated_jpeg(seed: int, width: int = 64, height: int = 40, orientation: int = 6) -> bytes:
    """A landscape JPEG whose EXIF says "rotate 90 degrees": decoded, it must be portrait."""
    img = Image.fromarray(picture(seed, 64)).resize((width, height))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", quality=92, exif=exif.tobytes())


def cmyk_jpeg(seed: int) -> bytes:
    return encode(Image.fromarray(picture(seed)).convert("CMYK"), "JPEG", quality=92)


def png16(seed: int, size: int = 48) -> bytes:
    """A 16-bit greyscale PNG using the full 0..65535 range."""
    grey = picture(seed, size).mean(axis=2)
    arr = (grey / 255.0 * 65535).astype(np.uint16)
    return encode(Image.fromarray(arr), "PNG")


def rgba_png(seed: int, size: int = 48) -> bytes:
    arr = np.dstack([picture(seed, size), np.full((size, size), 128, np.uint8)])
    return encode(Image.fromarray(arr, "RGBA"), "PNG")


def palette_trns_png(seed: int, size: int = 48) -> bytes:
    img = Image.fromarray(picture(seed, size)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return encode(img, "PNG", transparency=0)


def animated_gif(seed: int, frames: int = 3, size: int = 40) -> bytes:
    imgs = [Image.fromarray(picture(seed + k, size)).convert("P") for k in range(frames)]
    return encode(imgs[0], "GIF", save_all=True, append_images=imgs[1:], duration=50, loop=0)


def truncated(data: bytes, keep: float = 0.5) -> bytes:
    return data[: int(len(data) * keep)]


def corrupt_png(seed: int = 0) -> bytes:
    """A PNG signature followed by random bytes."""
    return b"\x89PNG\r\n\x1a\n" + np.random.default_rng(seed).bytes(300)


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb header)."""
    data = bytearray(encode(np.zeros((1, 1), np.uint8), "PNG"))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(data)


TEXT_AS_JPEG = b"this is a text file pretending to be a JPEG\n"


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_messy(root: Path) -> dict:
    """The messy folder of the issue; returns exactly what ``imagerec data inspect --json`` must report."""
    cat, dog = root / "cat", root / "dog"
    shared = png(100)
    near_src = picture(200)
    good = {
        cat / "plain.png": png(1),
        cat / "with space.png": png(2),
        cat / "ünïcødé 猫.png": png(3),
        cat / "photo.jpg": jpeg(4),
        cat / "exif_rotated.jpg": exif_rotated_jpeg(5),
        cat / "cmyk.jpg": cmyk_jpeg(6),
        cat / "deep" / "nested" / "sixteen_bit.png": png16(7),
        cat / "rgba.png": rgba_png(8),
        cat / "palette_trns.png": palette_trns_png(9),
        cat / "animated.gif": animated_gif(10),
        cat / "shared.png": shared,
        dog / "shared copy.png": shared,
        dog / "near_src.png": encode(near_src, "PNG"),
        dog / "near_src_reencoded.jpg": encode(near_src, "JPEG", quality=85),
        dog / "near_src_small.png": encode(Image.fromarray(near_src).resize((48, 48)), "PNG"),
        dog / "bitmap.bmp": encode(picture(11), "BMP"),
        dog / "scan.tiff": encode(picture(12), "TIFF"),
        dog / "web.webp": encode(picture(13), "WEBP", quality=90),
    }
    bad = {
        cat / "zero.jpg": b"",
        cat / "truncated.png": truncated(png(20, 96)),
        cat / "notes.jpg": TEXT_AS_JPEG,
        dog / "truncated.jpg": truncated(jpeg(21, 96), 0.6),
        dog / "corrupt.png": corrupt_png(),
        dog / "bomb.png": bomb_png(),
        root / "bird" / "empty.png": b"",
    }
    ignored = {
        cat / ".DS_Store": b"\x00\x00\x00\x01Bud1",
        cat / "._plain.png": b"\x00\x05\x16\x07AppleDouble",
        cat / "readme.txt": b"labels by hand\n",
        root / "notes.txt": b"top-level notes\n",
    }
    for path, data in {**good, **bad, **ignored}.items():
        write(path, data)
    return {
        "num_images": len(good),
        "classes": {"bird": 0, "cat": 11, "dog": 7},
        "invalid": sorted(str(p) for p in bad),
        "duplicates": [sorted([str(cat / "shared.png"), str(dog / "shared copy.png")])],
        "near_duplicates": [
            sorted(str(dog / n) for n in ("near_src.png", "near_src_reencoded.jpg", "near_src_small.png"))
        ],
        "label_conflicts": [
            {
                "labels": ["cat", "dog"],
                "paths": sorted([str(cat / "shared.png"), str(dog / "shared copy.png")]),
            }
        ],
        "ignored": len(ignored),
        "ignored_files": sorted(str(p) for p in ignored),
    }


def run_cli_subprocess(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """The installed entry point in a fresh process, exactly as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "imagerec", *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(name="messy")
def messy_fixture(tmp_path: Path) -> tuple[Path, dict]:
    """The issue's messy folder and what inspect must report for it."""
    root = tmp_path / "messy data"
    return root, write_messy(root)


@pytest.fixture(name="cli")
def cli_fixture(capsys):
    """Run ``imagerec ARGS`` through ``imagerec.cli.main`` (the console script): returns (exit code, out, err)."""
    from imagerec.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run
