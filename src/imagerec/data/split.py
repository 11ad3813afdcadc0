"""Stratified, seeded train/val/test split, written as a manifest CSV (path, label, split, sha256).

Identical files (same sha256) and near-duplicates (same picture re-encoded or resized, see ``scan.py``) always
land in the same split, so a test image never leaks into training. Splits
fixed by the source (``train/``, ``val/``, ``test/`` folders, or a CSV ``split`` column) are respected; a missing
``val`` (or ``test``) part is carved from ``train`` with the same stratified rule.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from imagerec.data.scan import ScanResult
from imagerec.data.sources import OUTSIDE_ROOT
from imagerec.errors import DataError
from imagerec.settings import DataConfig, TrainConfig
from imagerec.utils import atomic_write_text

SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = ("path", "label", "split", "sha256")


@dataclass(frozen=True)
class ManifestRow:
    path: str
    label: str
    split: str
    sha256: str


def check_trainable(result: ScanResult, max_invalid_ratio: float = 0.5) -> list[str]:
    """The class names usable for training; raise :class:`DataError` when the data cannot train a classifier."""
    counts = result.classes
    empty = [name for name, n in counts.items() if n == 0]
    links = sum(1 for item in result.invalid if item["reason"] == OUTSIDE_ROOT)
    # files refused as symlinks out of the dataset: the fix is a flag, so the error names it
    fix = f"{links} file(s) are symlinks out of the dataset: pass --follow-symlinks" if links else ""
    if empty:
        raise DataError(
            f"class {empty[0]!r} has no valid images"
            + (f" (and {len(empty) - 1} more empty classes)" if len(empty) > 1 else "")
            + (f"; {fix}" if fix else "; add images or remove the folder")
        )
    if len(counts) < 2:
        raise DataError(f"found {len(counts)} class(es) {list(counts)}; a classifier needs at least 2")
    total = len(result.images) + len(result.invalid)
    if total and len(result.invalid) / total > max_invalid_ratio:
        raise DataError(
            f"{len(result.invalid)} of {total} files are invalid (over {max_invalid_ratio:.0%}); "
            + (fix or "run 'imagerec data inspect' to see why")
        )
    return list(counts)


def _allocate(groups: list[list], fractions: dict[str, float], rng: random.Random) -> dict[str, list]:
    """Split whole groups of one class so that each part gets about its fraction of images."""
    rng.shuffle(groups)
    total = sum(len(g) for g in groups)
    targets = {name: round(total * frac) for name, frac in fractions.items()}
    for name, frac in fractions.items():
        if frac > 0 and targets[name] == 0 and total >= len(fractions) + 1:
            targets[name] = 1
    out: dict[str, list] = {name: [] for name in (*fractions, "train")}
    for group in groups:
        for name in fractions:
            if len(out[name]) < targets[name]:
                out[name].extend(group)
                break
        else:
            out["train"].extend(group)
    return out


def make_split(
    result: ScanResult,
    val: float = DataConfig.val,
    test: float = DataConfig.test,
    seed: int = TrainConfig.seed,
) -> list[ManifestRow]:
    """Assign every valid image of ``result`` to train, val or test.

    Args:
        result: a scan of the dataset.
        val: fraction of each class for validation (when the source has no ``val`` part).
        test: fraction of each class for test (when the source has no ``test`` part).
        seed: drives the shuffle; the same seed and data give the same manifest.

    Raises:
        DataError: fewer than two classes, an empty class, or a class too small for the split.
    """
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise DataError(f"split fractions val={val}, test={test} must be in [0, 1) and sum below 1")
    check_trainable(result)
    rng = random.Random(seed)
    fixed = {img.split for img in result.images if img.split}
    rows: list[ManifestRow] = []
    pool = [img for img in result.images if img.split in (None, "train")]
    rows += [
        ManifestRow(i.path, i.label, i.split, i.sha256) for i in result.images if i.split in ("val", "test")
    ]
    carve = {name: frac for name, frac in (("test", test), ("val", val)) if name not in fixed and frac > 0}
    by_class: dict[str, list[list]] = defaultdict(list)
    for group in _linked_groups(pool, result.near_duplicates):
        by_class[group[0].label].append(group)
    for label in sorted(by_class):
        groups = by_class[label]
        count, need = sum(len(g) for g in groups), len(carve) + 1
        if carve and count < need:
            raise DataError(
                f"class {label!r} has {count} image(s); the split needs at least {need} "
                "per class (add images or lower --val/--test)"
            )
        for split, imgs in _allocate(groups, carve, rng).items():
            rows += [ManifestRow(img.path, img.label, split, img.sha256) for img in imgs]
    rows.sort(key=lambda r: (SPLITS.index(r.split), r.label, r.path))
    _drop_cross_split_duplicates(rows)
    return rows


def _linked_groups(images: list, near_duplicates: list[list[str]]) -> list[list]:
    """Images that must stay on one side: identical bytes (even under two classes) or the same picture."""
    parent = list(range(len(images)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[str, int] = {}
    index = {img.path: i for i, img in enumerate(images)}
    for i, img in enumerate(images):
        parent[find(i)] = find(first.setdefault(img.sha256, i))
    for group in near_duplicates:
        members = [index[p] for p in group if p in index]
        for i in members[1:]:
            parent[find(i)] = find(members[0])
    groups: dict[int, list] = defaultdict(list)
    for i, img in enumerate(images):
        groups[find(i)].append(img)
    return [sorted(g, key=lambda img: img.path) for g in groups.values()]


def _drop_cross_split_duplicates(rows: list[ManifestRow]) -> None:
    """Remove training copies of files whose identical twin is in val/test (they would leak)."""
    held_out = {r.sha256 for r in rows if r.split != "train"}
    rows[:] = [r for r in rows if r.split != "train" or r.sha256 not in held_out]


def manifest_text(rows: list[ManifestRow]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    for r in rows:
        writer.writerow((r.path, r.label, r.split, r.sha256))
    return buf.getvalue()


def write_manifest(rows: list[ManifestRow], path: str | os.PathLike) -> str:
    """Write ``rows`` atomically; return the manifest's sha256 (the data fingerprint)."""
    text = manifest_text(rows)
    atomic_write_text(Path(path), text)
    return hashlib.sha256(text.encode()).hexdigest()


def read_manifest(path: str | os.PathLike) -> list[ManifestRow]:
    path = Path(path)
    if not path.exists():
        raise DataError(f"split manifest {str(path)!r} is missing")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if tuple(reader.fieldnames or ()) != MANIFEST_COLUMNS:
            raise DataError(f"{str(path)!r} is not an imagerec manifest (columns {reader.fieldnames})")
        return [ManifestRow(r["path"], r["label"], r["split"], r["sha256"]) for r in reader]


def rows_for(rows: list[ManifestRow], split: str) -> list[ManifestRow]:
    return [r for r in rows if r.split == split]
