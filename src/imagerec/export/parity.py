"""Parity of an exported artifact with the Keras model, on the run's own held-out images.

Top-1 agreement (share of images where both pick the same class) and the largest absolute difference of any
class probability. An export passes when agreement >= 99% (float formats) or >= 97% (int8).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from imagerec.data.split import read_manifest, rows_for
from imagerec.errors import DataError, ImageRejected

THRESHOLDS = {"none": 0.99, "float16": 0.99, "dynamic": 0.99, "int8": 0.97}


def split_images(classifier, split: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (N,S,S,C), label indices (N,))`` of one split of the classifier's run, via its manifest.

    Rows whose file is missing or unreadable are skipped; an empty result has shape ``(0, S, S, C)``.
    """
    size, channels = classifier.image_size, classifier.channels
    images, labels = [], []
    try:
        rows = rows_for(read_manifest(classifier.run_dir.manifest), split)
    except DataError:
        rows = []
    index = {name: i for i, name in enumerate(classifier.labels)}
    for row in rows:
        if limit is not None and len(images) >= limit:
            break
        if row.label not in index:
            continue
        try:
            images.append(classifier.preprocess(row.path))
        except ImageRejected:
            continue
        labels.append(index[row.label])
    if not images:
        return np.zeros((0, size, size, channels), np.uint8), np.zeros((0,), np.int64)
    return np.stack(images), np.asarray(labels, np.int64)


def evaluation_images(classifier, limit: int = 1000) -> tuple[np.ndarray, np.ndarray, str]:
    """The run's test images (or val when test has none) for parity and accuracy."""
    for split in ("test", "val"):
        images, labels = split_images(classifier, split, limit)
        if len(images):
            return images, labels, split
    return images, labels, "none"


def batched(fn: Callable, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    return np.concatenate([fn(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


def parity(reference: np.ndarray, candidate: np.ndarray, quantize: str, split: str) -> dict[str, Any]:
    """Compare two probability arrays; return the record stored in ``export.json``."""
    agree = float(np.mean(reference.argmax(1) == candidate.argmax(1))) if len(reference) else 0.0
    threshold = THRESHOLDS.get(quantize, 0.99)
    return {
        "split": split,
        "num_images": int(len(reference)),
        "top1_agreement": round(agree, 6),
        "max_abs_prob_diff": round(float(np.abs(reference - candidate).max()), 6) if len(reference) else None,
        "threshold": threshold,
        "passed": bool(len(reference) and agree >= threshold),
    }


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float | None:
    return round(float(np.mean(probs.argmax(1) == labels)), 6) if len(labels) else None


__all__ = ["THRESHOLDS", "split_images", "evaluation_images", "batched", "parity", "accuracy", "Path"]
