"""Shared fixtures: tiny *learnable* image folders built at test time, and one tiny trained run per session."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
warnings.filterwarnings("ignore", category=UserWarning)

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def make_image(colour: tuple[int, int, int], rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """A noisy image whose class is its dominant colour, with a random bright square (so it is not trivial)."""
    base = np.array(colour, dtype=np.float32)[None, None, :]
    img = base + rng.normal(0, 25, (size, size, 3))
    y, x = rng.integers(0, size - 8, 2)
    img[y : y + 8, x : x + 8] = 255 - base
    return np.clip(img, 0, 255).astype(np.uint8)


def write_colour_dataset(root: Path, per_class: int = 12, size: int = 32, seed: int = 0, fmt: str = "png") -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(make_image(colour, rng, size)).save(root / name / f"{name}_{i:03d}.{fmt}")
    return root


@pytest.fixture
def colour_data(tmp_path: Path) -> Path:
    """A folder of 3 colour classes x 12 PNG images, 32x32."""
    return write_colour_dataset(tmp_path / "colours")


@pytest.fixture(scope="session")
def imagerec_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("imagerec_home")
    os.environ["IMAGEREC_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, imagerec_home) -> Path:
    """One tiny imagerec-cnn run on colour data (3 classes), trained once per test session. Treat as read-only."""
    import imagerec

    root = tmp_path_factory.mktemp("trained")
    data = write_colour_dataset(root / "data", per_class=30, seed=1)
    # float32 on purpose: the tests compare runtimes against this model, and 9 test images per class keep the
    # accuracy check meaningful (a single miss costs 11 points, not 17)
    run = imagerec.train(
        data, out=root / "run", epochs=12, batch_size=16, seed=0, mixed_precision="off", log=lambda *_: None
    )
    assert run.metrics["test"]["accuracy"] >= 0.8, run.metrics
    return run.path
