"""Stratified, seeded train/val/test split, written as a manifest CSV (path, label, split, sha256).

A multi-label dataset's manifest has a ``labels`` column instead of ``label`` (each image's class names joined by
``;``, empty for none), and its split is an iterative stratification of the label sets (see :func:`stratify_sets`).

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
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from imagerec.data.scan import ScanResult
from imagerec.data.sources import OUTSIDE_ROOT, label_set
from imagerec.errors import DataError
from imagerec.settings import DataConfig, TrainConfig
from imagerec.utils import atomic_write_text

SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = ("path", "label", "split", "sha256")
MULTILABEL_COLUMNS = ("path", "labels", "split", "sha256")


@dataclass(frozen=True)
class ManifestRow:
    path: str
    label: str  # the class; a multi-label row: its class names joined by ';' ("" = none)
    split: str
    sha256: str
    multilabel: bool = False

    @property
    def labels(self) -> list[str]:
        """The row's class names: one, or a multi-label row's set (possibly empty)."""
        return label_set(self.label) if self.multilabel else [self.label]


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
    row = partial(ManifestRow, multilabel=result.task == "multilabel")
    rows: list[ManifestRow] = []
    pool = [img for img in result.images if img.split in (None, "train")]
    rows += [row(i.path, i.label, i.split, i.sha256) for i in result.images if i.split in ("val", "test")]
    carve = {name: frac for name, frac in (("test", test), ("val", val)) if name not in fixed and frac > 0}
    if result.task == "multilabel":
        groups = _linked_groups(pool, result.near_duplicates)
        if carve and sum(map(len, groups)) < len(carve) + 1:
            raise DataError(f"the split needs at least {len(carve) + 1} images to train on (add images)")
        for split, imgs in stratify_sets(groups, carve, result.names_of, rng).items():
            rows += [row(img.path, img.label, split, img.sha256) for img in imgs]
        return _finish(rows)
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
            rows += [row(img.path, img.label, split, img.sha256) for img in imgs]
    return _finish(rows)


def _finish(rows: list[ManifestRow]) -> list[ManifestRow]:
    rows.sort(key=lambda r: (SPLITS.index(r.split), r.label, r.path))
    _drop_cross_split_duplicates(rows)
    return rows


def stratify_sets(
    groups: list[list], fractions: dict[str, float], names_of, rng: random.Random
) -> dict[str, list]:
    """Iterative stratification of multi-label images (Sechidis, Tsoumakas & Vlahavas, 2011), group by group.

    Each part (``fractions``, the rest ``train``) wants its fraction of every class's images. The class with the
    fewest unassigned groups goes first (rare classes are the hard ones): each of its groups goes to the part that
    still wants most of that class, ties to the part that wants most images, then a seeded coin. Groups without
    a label fill the parts up to their image counts last. A group (identical or near-identical files) is never
    divided.

    Args:
        groups: lists of scanned images that must stay on one side.
        fractions: part name -> share of the images (``{"test": 0.1, "val": 0.1}``).
        names_of: an image's ``label`` -> its class names.
        rng: the seeded random source.
    """
    share = {**fractions, "train": 1.0 - sum(fractions.values())}
    rng.shuffle(groups)
    counts = [Counter(name for img in g for name in names_of(img.label)) for g in groups]
    totals: Counter = sum(counts, Counter())
    want = {part: {name: f * n for name, n in totals.items()} for part, f in share.items()}
    want_images = {part: f * sum(map(len, groups)) for part, f in share.items()}
    out: dict[str, list] = {part: [] for part in share}
    done = [False] * len(groups)

    def assign(i: int, part: str) -> None:
        out[part].extend(groups[i])
        want_images[part] -= len(groups[i])
        for name, n in counts[i].items():
            want[part][name] -= n
        done[i] = True

    with_name = {name: [i for i, c in enumerate(counts) if name in c] for name in sorted(totals)}
    while live := {
        name: left for name, idx in with_name.items() if (left := [i for i in idx if not done[i]])
    }:
        name = min(live, key=lambda n: (len(live[n]), n))
        for i in live[name]:
            assign(i, max(share, key=lambda p: (want[p][name], want_images[p], rng.random())))
    for i in (i for i, c in enumerate(counts) if not c):
        assign(i, max(share, key=lambda p: (want_images[p], rng.random())))
    return out


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
    writer.writerow(MULTILABEL_COLUMNS if any(r.multilabel for r in rows) else MANIFEST_COLUMNS)
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
        columns = tuple(reader.fieldnames or ())
        if columns not in (MANIFEST_COLUMNS, MULTILABEL_COLUMNS):
            raise DataError(f"{str(path)!r} is not an imagerec manifest (columns {reader.fieldnames})")
        key, multilabel = columns[1], columns == MULTILABEL_COLUMNS
        return [ManifestRow(r["path"], r[key], r["split"], r["sha256"], multilabel) for r in reader]


def rows_for(rows: list[ManifestRow], split: str) -> list[ManifestRow]:
    return [r for r in rows if r.split == split]
