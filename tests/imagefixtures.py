"""Tiny *learnable* image data for tests: the class is the dominant colour.

Kept out of ``conftest.py`` so that any test module can ``from imagefixtures import ...`` (several folders have
their own ``conftest.py``, which makes ``from conftest import`` ambiguous).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def make_image(colour: tuple[int, int, int], rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """A noisy image whose class is its dominant colour, with a random bright square (so it is not trivial)."""
    base = np.array(colour, dtype=np.float32)[None, None, :]
    img = base + rng.normal(0, 25, (size, size, 3))
    y, x = rng.integers(0, size - 8, 2)
    img[y : y + 8, x : x + 8] = 255 - base
    return np.clip(img, 0, 255).astype(np.uint8)


def write_colour_dataset(
    root: Path, per_class: int = 12, size: int = 32, seed: int = 0, fmt: str = "png"
) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(make_image(colour, rng, size)).save(root / name / f"{name}_{i:03d}.{fmt}")
    return root


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """``imagerec ARGS`` in-process: ``(exit code, stdout, stderr)``."""
    from imagerec.cli import main

    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def start_serve(run: Path, *args: str, env: dict[str, str] | None = None, timeout_s: float = 240):
    """``imagerec serve RUN ARGS`` as a real process on a free 127.0.0.1 port, waited for until ``/readyz``
    answers 200; returns ``(proc, url, port)`` (stderr is a text pipe). Fails the test with the server's stderr
    if it exits or is not ready in time."""
    import os
    import socket
    import subprocess
    import sys
    import time

    import httpx
    import pytest

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    exe = str(Path(sys.executable).with_name("imagerec"))
    proc = subprocess.Popen(
        [exe, "serve", str(run), "--port", str(port), *args],
        env=env if env is not None else {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url, port
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"imagerec serve did not start: {proc.stderr.read()[-2000:]}")
        time.sleep(0.3)


def make_multilabel_image(present: list[str], rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """A grey noisy image holding one bright square per colour of ``present``, each in its own quadrant."""
    img = 128 + rng.normal(0, 20, (size, size, 3))
    half, side = size // 2, size // 2 - 4
    for name, quadrant in zip(present, rng.permutation(4), strict=False):
        y, x = (quadrant // 2) * half + 2, (quadrant % 2) * half + 2
        img[y : y + side, x : x + side] = COLOURS[name]
    return np.clip(img, 0, 255).astype(np.uint8)


def write_multilabel_dataset(root: Path, n: int = 60, size: int = 32, seed: int = 0) -> Path:
    """``root/labels.csv`` (``path,labels``) over ``n`` images: each colour of ``COLOURS`` present with p=0.5
    (so some images have no label); returns the CSV's path."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = ["path,labels"]
    for i in range(n):
        present = [name for name in COLOURS if rng.random() < 0.5]
        Image.fromarray(make_multilabel_image(present, rng, size)).save(root / "images" / f"{i:03d}.png")
        lines.append(f"images/{i:03d}.png,{';'.join(present)}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root / "labels.csv"


#: Every export `imagerec export RUN --format all` writes (written out, so that a row lost from the format table
#: fails the export tests).
ALL_EXPORTS = {
    "savedmodel",
    "tflite",
    "tflite-float16",
    "tflite-dynamic",
    "tflite-int8",
    "onnx",
    "onnx-int8",
    "openvino",
    "openvino-int8",
}
