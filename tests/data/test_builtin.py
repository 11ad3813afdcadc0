"""Built-in datasets written as PNG trees, including one test on the real Debian Fashion-MNIST files."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagerec.data import builtin
from imagerec.data.scan import scan_dataset
from imagerec.data.sources import load_source
from imagerec.errors import DataError

FASHION_FILES = [builtin.FASHION_DIR / n for n in ("train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")]
needs_fashion = pytest.mark.skipif(
    not all(p.exists() for p in FASHION_FILES),
    reason=f"Debian package dataset-fashion-mnist is not installed ({builtin.FASHION_DIR} missing); "
    "apt-get install dataset-fashion-mnist",
)


LIMIT = 1000


@pytest.fixture(scope="module")
def fashion(tmp_path_factory) -> Path:
    """The first LIMIT images of each official split of the real files, written once for this module."""
    return builtin.write_builtin("fashion-mnist", tmp_path_factory.mktemp("fashion") / "fm", limit=LIMIT)


@needs_fashion
def test_real_fashion_mnist_keeps_official_split_classes_and_pixels(fashion: Path):
    dest = fashion
    idx = {s: builtin._read_idx(builtin.FASHION_DIR / f"{p}-{k}-idx{d}-ubyte.gz")
           for s, p in (("train", "train"), ("test", "t10k")) for k, d in (("images", 3),) }  # fmt: skip
    labels = {
        s: builtin._read_idx(builtin.FASHION_DIR / f"{p}-labels-idx1-ubyte.gz")
        for s, p in (("train", "train"), ("test", "t10k"))
    }
    source = load_source(dest)
    assert source.kind == "splits"
    assert set(source.class_names) <= set(builtin.FASHION_CLASSES)
    for split in ("train", "test"):
        files = sorted(p for p in (dest / split).rglob("*.png"))
        assert len(files) == LIMIT
        expected = Counter(builtin.FASHION_CLASSES[int(y)] for y in labels[split][:LIMIT])
        assert Counter(p.parent.name for p in files) == expected
        first = next(p for p in files if p.name == "00000.png")
        assert first.parent.name == builtin.FASHION_CLASSES[int(labels[split][0])]
        assert np.array_equal(np.asarray(Image.open(first)), idx[split][0])
    assert Counter(s.split for s in source.samples) == {"train": LIMIT, "test": LIMIT}


@needs_fashion
def test_near_duplicates_on_real_fashion_mnist_form_no_giant_groups(fashion: Path):
    result = scan_dataset(fashion)
    assert len(result.images) == 2 * LIMIT and not result.invalid
    in_groups = sum(len(g) for g in result.near_duplicates)
    assert max((len(g) for g in result.near_duplicates), default=0) <= 3, result.near_duplicates
    assert in_groups <= 0.005 * len(result.images), result.near_duplicates


@pytest.mark.parametrize(("name", "size", "total"), [("digits", (8, 8), 1797), ("mnist-5k", (28, 28), 5000)])
def test_small_builtins(tmp_path: Path, name: str, size: tuple[int, int], total: int):
    dest = builtin.write_builtin(name, tmp_path / name, limit=25)
    files = sorted(dest.rglob("*.png"))
    assert len(files) == 25
    assert {p.parent.name for p in files} <= {str(i) for i in range(10)}
    assert Image.open(files[0]).size == size and Image.open(files[0]).mode == "L"
    assert (dest / ".complete").exists() and not (tmp_path / f"{name}.partial").exists()
    images, labels = builtin.get_builtin(name).load()["all"]
    assert len(images) == len(labels) == total


def test_a_complete_copy_is_reused_and_a_foreign_folder_refused(tmp_path: Path):
    dest = builtin.write_builtin("digits", tmp_path / "d", limit=10)
    marker = dest / "0" / "mine.png"
    marker.write_bytes(b"kept")
    assert builtin.write_builtin("digits", dest, limit=10) == dest
    assert marker.read_bytes() == b"kept"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x")
    with pytest.raises(DataError, match="exists and is not an imagerec copy of digits"):
        builtin.write_builtin("digits", tmp_path / "other")


@pytest.mark.slow
def test_missing_fashion_mnist_offline_says_how_to_install(tmp_path: Path, monkeypatch):
    """Without the Debian files and without network: one line naming the package (slow: keras tries to download)."""
    monkeypatch.setattr(builtin, "FASHION_DIR", tmp_path / "absent")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    try:
        builtin.write_builtin("fashion-mnist", tmp_path / "fm", limit=5)
    except DataError as exc:
        assert "apt-get install dataset-fashion-mnist" in str(exc)
    else:
        pytest.skip("this machine is online: keras.datasets downloaded Fashion-MNIST")
