"""Validate every file of a dataset by decoding it, and find exact and near duplicates.

Each file is decoded with the same :func:`imagerec.data.images.open_image` that training and serving use, in a
pool of worker processes. Exact duplicates share their sha256; near-duplicates share a perceptual hash (dHash,
64 bits, of the decoded pixels) while their bytes differ.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from imagerec.data.images import open_image
from imagerec.data.sources import DatasetSource, Sample, load_source
from imagerec.errors import ImageRejected


@dataclass(frozen=True)
class ScannedImage:
    path: str
    label: str
    split: str | None
    sha256: str
    phash: str
    width: int
    height: int
    format: str
    mode: str


@dataclass
class ScanResult:
    """What :func:`scan_dataset` found. ``to_dict`` is the JSON of ``imagerec data inspect --json``."""

    root: str
    kind: str
    class_names: list[str]
    images: list[ScannedImage]
    invalid: list[dict[str, str]]
    ignored: int
    duplicates: list[list[str]] = field(default_factory=list)
    near_duplicates: list[list[str]] = field(default_factory=list)

    @property
    def classes(self) -> dict[str, int]:
        counts = Counter(img.label for img in self.images)
        return {name: counts.get(name, 0) for name in self.class_names}

    def to_dict(self) -> dict[str, Any]:
        classes = self.classes
        nonzero = [c for c in classes.values() if c]
        sizes = [(i.width, i.height) for i in self.images]
        return {
            "root": self.root,
            "kind": self.kind,
            "num_images": len(self.images),
            "num_classes": len(classes),
            "classes": classes,
            "empty_classes": [k for k, v in classes.items() if v == 0],
            "imbalance_ratio": (max(nonzero) / min(nonzero)) if nonzero else None,
            "splits": dict(Counter(i.split for i in self.images if i.split)),
            "image_size": {
                "min": list(min(sizes, key=lambda s: s[0] * s[1])) if sizes else None,
                "max": list(max(sizes, key=lambda s: s[0] * s[1])) if sizes else None,
                "median": [int(np.median([s[0] for s in sizes])), int(np.median([s[1] for s in sizes]))]
                if sizes
                else None,
            },
            "formats": dict(Counter(i.format for i in self.images)),
            "modes": dict(Counter(i.mode for i in self.images)),
            "invalid": self.invalid,
            "duplicates": self.duplicates,
            "near_duplicates": self.near_duplicates,
            "ignored": self.ignored,
        }


def dhash(img: Image.Image, size: int = 8) -> str:
    """64-bit difference hash of the decoded pixels, as 16 hex digits."""
    small = np.asarray(img.convert("L").resize((size + 1, size), Image.Resampling.BILINEAR), dtype=np.int16)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return f"{int(''.join('1' if b else '0' for b in bits), 2):0{size * size // 4}x}"


def check_file(sample: Sample) -> ScannedImage | dict[str, str]:
    """Decode one file; the scanned facts, or ``{path, reason}`` when it is invalid."""
    try:
        data = Path(sample.path).read_bytes()
    except OSError as exc:
        return {"path": sample.path, "reason": f"unreadable: {exc.strerror or exc}"}
    try:
        img = open_image(data)
    except ImageRejected as exc:
        return {"path": sample.path, "reason": f"{exc.code}: {str(exc).removeprefix('<bytes>: ')}"}
    with Image.open(io.BytesIO(data)) as header:  # decodes fine: open_image just did
        fmt, mode = header.format or "?", header.mode
    return ScannedImage(
        path=sample.path,
        label=sample.label,
        split=sample.split,
        sha256=hashlib.sha256(data).hexdigest(),
        phash=dhash(img),
        width=img.width,
        height=img.height,
        format=fmt,
        mode=mode,
    )


def _check_many(samples: list[Sample]) -> list[ScannedImage | dict[str, str]]:
    return [check_file(s) for s in samples]


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def scan_dataset(data: str | os.PathLike | DatasetSource, workers: int | None = None) -> ScanResult:
    """Decode every image of ``data`` and report valid, invalid, ignored and duplicate files.

    Args:
        data: a dataset path, CSV, ``builtin:NAME`` or an already loaded :class:`DatasetSource`.
        workers: decode processes (default: the CPU count, at most 8).

    Example:
        >>> result = scan_dataset("photos/")
        >>> result.to_dict()["classes"]
    """
    source = data if isinstance(data, DatasetSource) else load_source(data)
    workers = workers or default_workers()
    samples = source.samples
    if workers > 1 and len(samples) >= 256:
        chunks = [samples[i : i + 256] for i in range(0, len(samples), 256)]
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = [r for chunk in pool.map(_check_many, chunks) for r in chunk]
    else:
        results = _check_many(samples)
    images = [r for r in results if isinstance(r, ScannedImage)]
    invalid = list(source.invalid) + [r for r in results if isinstance(r, dict)]
    result = ScanResult(
        root=str(source.root),
        kind=source.kind,
        class_names=list(source.class_names),
        images=images,
        invalid=invalid,
        ignored=source.ignored,
    )
    result.duplicates, result.near_duplicates = find_duplicates(images)
    return result


def find_duplicates(images: list[ScannedImage]) -> tuple[list[list[str]], list[list[str]]]:
    """Groups of paths with identical bytes, and groups whose pixels match (same dHash) but bytes differ."""
    by_sha: dict[str, list[str]] = defaultdict(list)
    by_phash: dict[str, list[ScannedImage]] = defaultdict(list)
    for img in images:
        by_sha[img.sha256].append(img.path)
        by_phash[img.phash].append(img)
    exact = [sorted(paths) for paths in by_sha.values() if len(paths) > 1]
    near = []
    for group in by_phash.values():
        if len({g.sha256 for g in group}) > 1 and not _is_flat(group[0].phash):
            near.append(sorted(g.path for g in group))
    return sorted(exact), sorted(near)


def _is_flat(phash: str) -> bool:
    """A dHash of all zeros is what every blank image gives: too weak to call two images the same picture."""
    return set(phash) <= {"0"}


def scan_summary(result: ScanResult) -> dict[str, Any]:
    """A JSON-ready dict (alias for ``result.to_dict()``)."""
    return result.to_dict()


__all__ = ["ScanResult", "ScannedImage", "scan_dataset", "check_file", "find_duplicates", "asdict"]
