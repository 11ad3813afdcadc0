"""Parity of an exported artifact with the Keras model, on the run's own held-out images.

Top-1 agreement (share of images where both pick the same class) and the largest absolute difference of any
class probability. An export passes when agreement >= 99% (float formats) or >= 97% (int8), near-ties excluded
(see :func:`parity`).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np

from imagerec.data.images import load_image
from imagerec.data.split import read_manifest, rows_for
from imagerec.errors import DataError, ImageRejected
from imagerec.run import RunDir

THRESHOLDS = {"none": 0.99, "float16": 0.99, "dynamic": 0.99, "int8": 0.97}
#: a disagreement where the reference's own scores of the two classes differ by less than this is a near-tie
TIE_MARGIN = {"none": 0.05, "float16": 0.05, "dynamic": 0.05, "int8": 0.1}


def run_spec(run_dir: RunDir) -> dict[str, Any]:
    """The run's preprocessing contract, as every export records it: image size, channels, resize and labels."""
    config = run_dir.read_config()
    return {
        "image_size": int(config["image_size"]),
        "channels": int(config["channels"]),
        "resize": config.get("resize", "stretch"),
        "labels": run_dir.read_labels(),
    }


def split_images(run_dir: RunDir, split: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (N,S,S,C), label indices (N,))`` of one split of the run, via its manifest.

    Images are decoded as the run's classifier preprocesses them (``load_image`` with the run's size, channels
    and resize policy). Rows whose file is missing or unreadable are skipped; an empty result has shape
    ``(0, S, S, C)``. With ``limit`` below the split's size the rows are a seeded random sample (kept in manifest
    order): the manifest is sorted by class, so its first rows would be one or two classes only (an accuracy, a
    parity check or int8 calibration measured on those).
    """
    spec = run_spec(run_dir)
    size, channels = spec["image_size"], spec["channels"]
    try:
        rows = rows_for(read_manifest(run_dir.manifest), split)
    except DataError:
        rows = []
    index = {name: i for i, name in enumerate(spec["labels"])}
    order = list(range(len(rows)))
    if limit is not None and limit < len(rows):
        random.Random(0).shuffle(order)
    chosen: list[tuple[int, np.ndarray, int]] = []
    for i in order:
        if limit is not None and len(chosen) >= limit:
            break
        row = rows[i]
        if row.label not in index:
            continue
        try:
            chosen.append((i, load_image(row.path, (size, size), channels, spec["resize"]), index[row.label]))
        except ImageRejected:
            continue
    chosen.sort(key=lambda item: item[0])
    images = [image for _, image, _ in chosen]
    labels = [label for _, _, label in chosen]
    if not images:
        return np.zeros((0, size, size, channels), np.uint8), np.zeros((0,), np.int64)
    return np.stack(images), np.asarray(labels, np.int64)


def evaluation_images(run_dir: RunDir, limit: int = 1000) -> tuple[np.ndarray, np.ndarray, str]:
    """The run's test images (or val when test has none) for parity and accuracy."""
    for split in ("test", "val"):
        images, labels = split_images(run_dir, split, limit)
        if len(images):
            return images, labels, split
    return images, labels, "none"


def parity(reference: np.ndarray, candidate: np.ndarray, quantize: str, split: str) -> dict[str, Any]:
    """Compare two probability arrays; return the record stored in ``export.json``.

    A top-1 disagreement counts against the export unless it is a near-tie: the reference model itself scores the
    two classes within ``TIE_MARGIN`` of each other (float rounding may legitimately flip those). Both the raw
    and the tie-aware agreement are recorded; the threshold applies to the tie-aware one.
    """
    n = len(reference)
    threshold = THRESHOLDS.get(quantize, 0.99)
    if not n:
        return {
            "split": split,
            "num_images": 0,
            "top1_agreement": 0.0,
            "passed": False,
            "threshold": threshold,
        }
    ref_top, cand_top = reference.argmax(1), candidate.argmax(1)
    disagree = ref_top != cand_top
    rows = np.arange(n)
    margin = reference[rows, ref_top] - reference[rows, cand_top]
    tie_margin = TIE_MARGIN.get(quantize, 0.05)
    ties = disagree & (margin < tie_margin)
    effective = 1.0 - float(np.mean(disagree & ~ties))
    return {
        "split": split,
        "num_images": int(n),
        "top1_agreement": round(1.0 - float(np.mean(disagree)), 6),
        "near_ties": int(ties.sum()),
        "tie_margin": tie_margin,
        "top1_agreement_excluding_ties": round(effective, 6),
        "max_abs_prob_diff": round(float(np.abs(reference - candidate).max()), 6),
        "threshold": threshold,
        "passed": bool(effective >= threshold),
    }


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float | None:
    return round(float(np.mean(probs.argmax(1) == labels)), 6) if len(labels) else None


__all__ = ["THRESHOLDS", "run_spec", "split_images", "evaluation_images", "parity", "accuracy", "Path"]
