"""Parity of an exported artifact with the Keras model, on the run's own held-out images.

Top-1 agreement (share of images where both pick the same class) and the largest absolute difference of any
class probability. An export passes when agreement >= 99% (float formats) or >= 97% (int8), near-ties excluded
(see :func:`parity`), and when its embedding (the artifact's second output) points where the Keras one does: mean
cosine similarity >= 0.99 for the float exports (float32, float16, dynamic); for int8, whose activations are
8-bit, it is recorded and not a bar (0.9999 on the default Fashion-MNIST net, but below 0.95 on MobileNetV3's
hard-swish backbones, whose top-1 answers still agree; see ``EMBEDDING_THRESHOLDS``). When the run has an embedding reference (``reference.npz``)
the out-of-distribution scores of both are compared too, and recorded (not a pass/fail bar: a score near
``ood_threshold`` may legitimately fall on the other side after rounding).

A multi-label run (``thresholds`` in :class:`ParityData`) compares label *sets* instead of the top-1 class: the
share of images whose classes at the run's per-class thresholds (``RUN/thresholds.json``) are identical, with the
same bars, a disagreement being a near-tie when every class that flips lies within ``TIE_MARGIN`` of its threshold
(see :func:`multilabel_parity`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
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
#: the mean cosine similarity of an export's embedding to the Keras one that passes (min and mean are recorded);
#: None: recorded only
EMBEDDING_THRESHOLDS: dict[str, float | None] = {"none": 0.99, "float16": 0.99, "dynamic": 0.99, "int8": None}


@dataclass(frozen=True)
class ParityData:
    """What an export is checked against: the run's held-out images and the Keras model's answers on them."""

    images: np.ndarray  # uint8 (N, S, S, C)
    probs: np.ndarray  # (N, K)
    embedding: np.ndarray | None  # (N, D); None for a model without one
    split: str
    reference: Any = None  # the run's imagerec.openworld.reference.Reference, None without one
    ood_threshold: float | None = None
    thresholds: list[float] | None = None  # a multi-label run's per-class thresholds (None: one label each)


def run_spec(run_dir: RunDir) -> dict[str, Any]:
    """The run's preprocessing contract, as every export records it: image size, channels, resize and labels (and
    a multi-label run's per-class ``thresholds``, in label order)."""
    config = run_dir.read_config()
    spec = {
        "image_size": int(config["image_size"]),
        "channels": int(config["channels"]),
        "resize": config.get("resize", "stretch"),
        "labels": run_dir.read_labels(),
    }
    if config.get("task") == "multilabel":
        spec["thresholds"] = [round(t, 6) for t in run_dir.read_thresholds(spec["labels"])]
    return spec


def split_images(run_dir: RunDir, split: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (N,S,S,C), label indices (N,))`` of one split of the run, via its manifest (a multi-label
    run's labels: multi-hot float32 ``(N, K)``).

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
    multilabel = any(row.multilabel for row in rows)
    chosen: list[tuple[int, np.ndarray, Any]] = []
    for i in order:
        if limit is not None and len(chosen) >= limit:
            break
        row = rows[i]
        if not set(row.labels) <= set(index):
            continue
        target = np.isin(spec["labels"], row.labels).astype(np.float32) if multilabel else index[row.label]
        try:
            chosen.append((i, load_image(row.path, (size, size), channels, spec["resize"]), target))
        except ImageRejected:
            continue
    chosen.sort(key=lambda item: item[0])
    images = [image for _, image, _ in chosen]
    labels = [label for _, _, label in chosen]
    empty = np.zeros((0, len(index)), np.float32) if multilabel else np.zeros((0,), np.int64)
    if not images:
        return np.zeros((0, size, size, channels), np.uint8), empty
    return np.stack(images), (np.stack(labels) if multilabel else np.asarray(labels, np.int64))


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


def multilabel_parity(
    reference: np.ndarray, candidate: np.ndarray, thresholds: Any, quantize: str, split: str
) -> dict[str, Any]:
    """Compare a multi-label run's probabilities ``(N, K)`` as label sets at its per-class ``thresholds``.

    ``label_set_agreement`` is the share of images whose sets are identical; a disagreement is a near-tie when
    every class that flips has a reference probability within ``TIE_MARGIN`` of its threshold (rounding may
    legitimately move those across). The bar (:data:`THRESHOLDS`) applies to the agreement without near-ties.
    """
    n, bar, margin = len(reference), THRESHOLDS.get(quantize, 0.99), TIE_MARGIN.get(quantize, 0.05)
    record: dict[str, Any] = {"task": "multilabel", "split": split, "num_images": int(n)}
    if not n:
        return {**record, "label_set_agreement": 0.0, "threshold": bar, "passed": False}
    cut = np.asarray(thresholds, np.float64)[None, :]
    flips = (reference >= cut) != (candidate >= cut)  # (N, K): a class in one set and not in the other
    disagree = flips.any(axis=1)
    ties = disagree & ~(flips & (np.abs(reference - cut) >= margin)).any(axis=1)
    effective = 1.0 - float(np.mean(disagree & ~ties))
    return {
        **record,
        "label_set_agreement": round(1.0 - float(np.mean(disagree)), 6),
        "near_ties": int(ties.sum()),
        "tie_margin": margin,
        "label_set_agreement_excluding_ties": round(effective, 6),
        "max_abs_prob_diff": round(float(np.abs(reference - candidate).max()), 6),
        "thresholds": [round(float(t), 6) for t in np.ravel(cut)],
        "threshold": bar,
        "passed": bool(effective >= bar),
    }


def agreement(result: dict[str, Any]) -> float:
    """The headline agreement of a parity record: top-1 (one label per image) or label sets (multi-label)."""
    key = "label_set_agreement" if result.get("task") == "multilabel" else "top1_agreement"
    return float(result.get(key, 0.0))


def check(data: ParityData, probs: np.ndarray, embedding: np.ndarray | None, quantize: str) -> dict[str, Any]:
    """The parity record of an export's outputs: :func:`parity` (a multi-label run: :func:`multilabel_parity`) of
    the probabilities, plus ``embedding`` (and ``ood``) when the Keras model has an embedding; ``passed`` needs
    both."""
    if data.thresholds is not None:
        result = multilabel_parity(data.probs, probs, data.thresholds, quantize, data.split)
    else:
        result = parity(data.probs, probs, quantize, data.split)
    if data.embedding is None or not len(data.embedding):
        return result
    result["embedding"] = embedding_parity(data.embedding, embedding, quantize)
    result["passed"] = bool(result["passed"] and result["embedding"]["passed"])
    if data.reference is not None and embedding is not None:
        result["ood"] = ood_parity(data.reference.score(data.embedding), data.reference.score(embedding),
                                   data.ood_threshold)  # fmt: skip
    return result


def embedding_parity(reference: np.ndarray, candidate: np.ndarray | None, quantize: str) -> dict[str, Any]:
    """Cosine similarity of two embedding arrays ``(N, D)``, row by row: its mean (the bar) and minimum."""
    threshold = EMBEDDING_THRESHOLDS.get(quantize, 0.99)
    if candidate is None:
        return {"present": False, "threshold": threshold, "passed": threshold is None}
    a, b = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cosine = (a * b).sum(1) / np.maximum(norms, 1e-12)
    mean = float(cosine.mean())
    return {
        "present": True,
        "dims": int(a.shape[1]),
        "cosine_mean": round(mean, 6),
        "cosine_min": round(float(cosine.min()), 6),
        "threshold": threshold,
        "passed": bool(threshold is None or mean >= threshold),
    }


def ood_parity(reference: np.ndarray, candidate: np.ndarray, threshold: float | None) -> dict[str, Any]:
    """How far an export's out-of-distribution scores are from the Keras model's (the same reference), and how
    often they fall on the same side of ``ood_threshold`` (when the run has one)."""
    diff = np.abs(np.asarray(candidate, np.float64) - np.asarray(reference, np.float64))
    relative = diff / np.maximum(np.abs(reference), 1e-6)
    record: dict[str, Any] = {
        "max_abs_diff": round(float(diff.max()), 6),
        "median_rel_diff": round(float(np.median(relative)), 6),
        "max_rel_diff": round(float(relative.max()), 6),
        "ood_threshold": threshold,
    }
    if threshold is not None:
        same = (np.asarray(reference) > threshold) == (np.asarray(candidate) > threshold)
        record["decision_agreement"] = round(float(same.mean()), 6)
    return record


def accuracy(probs: np.ndarray, labels: np.ndarray, thresholds: Any = None) -> float | None:
    """Top-1 accuracy; for multi-hot ``labels`` ``(N, K)`` the subset accuracy (identical label sets) at
    ``thresholds`` (0.5 when None)."""
    if not len(labels):
        return None
    if np.ndim(labels) == 2:
        cut = 0.5 if thresholds is None else np.asarray(thresholds)[None, :]
        return round(float(np.mean(((probs >= cut) == (labels > 0.5)).all(axis=1))), 6)
    return round(float(np.mean(probs.argmax(1) == labels)), 6)


__all__ = [
    "EMBEDDING_THRESHOLDS",
    "THRESHOLDS",
    "ParityData",
    "accuracy",
    "agreement",
    "check",
    "embedding_parity",
    "evaluation_images",
    "multilabel_parity",
    "ood_parity",
    "parity",
    "run_spec",
    "split_images",
    "Path",
]
