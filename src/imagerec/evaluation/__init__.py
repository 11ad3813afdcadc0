"""Evaluation: metrics a practitioner trusts (scikit-learn underneath), pictures a person can read, one report.

Example:
    >>> import imagerec
    >>> m = imagerec.evaluate("runs/fmnist")          # the run's own test split
    >>> m["accuracy"], m["macro"]["f1"], m["per_class"]["Shirt"]["recall"]
    >>> imagerec.evaluate("runs/fmnist", data="more_photos/")   # any dataset with the same class names
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from imagerec.evaluation.calibration import calibrate
from imagerec.evaluation.compare import compare_runs
from imagerec.evaluation.gradcam import GradCAM, explain
from imagerec.evaluation.issues import find_label_issues
from imagerec.evaluation.metrics import compute_metrics
from imagerec.evaluation.report import write_report

__all__ = [
    "evaluate",
    "evaluate_classifier",
    "compute_metrics",
    "calibrate",
    "compare_runs",
    "explain",
    "find_label_issues",
    "write_report",
    "GradCAM",
]

REPORT_ISSUES = 24


def evaluate(
    run: str | os.PathLike,
    data: str | None = None,
    split: str = "test",
    top_k: int = 5,
    write: bool = True,
    tta: bool = False,
) -> dict[str, Any]:
    """Evaluate a run on its own held-out ``split`` (default ``test``) or on ``data`` with the same class names.

    Args:
        run: the run directory.
        data: another dataset (folder, split folder, CSV) whose class names are among the run's; its ``split``
            part is used when it has fixed splits, else all of it.
        split: ``test`` or ``val`` (or ``train``) of the run's manifest, when ``data`` is None.
        top_k: k of ``top_k_accuracy``.
        write: write ``RUN/evaluation/`` (metrics.json, predictions.csv, pictures, report.html).
        tta: average each image with its mirror image (runs trained with horizontal flips only).

    Returns:
        The content of ``metrics.json``: ``accuracy``, ``top_k_accuracy``, ``macro``, ``weighted``,
        ``per_class``, ``confusion_matrix``, ``labels``, ``num_images``, ``ece``, ``roc_auc_ovr`` and more.

    Raises:
        RunError: the run is missing files or was written by another version.
        DataError: the dataset has unknown class names or the split is empty.
    """
    from imagerec.classifier import Classifier

    return evaluate_classifier(
        Classifier.load(run, tta=tta), data=data, split=split, top_k=top_k, write=write
    )


def evaluate_classifier(
    clf, data: str | None = None, split: str = "test", top_k: int = 5, write: bool = True
) -> dict[str, Any]:
    """:func:`evaluate` for an already loaded :class:`imagerec.Classifier` (``Classifier.evaluate`` calls it)."""
    from imagerec.classifier import softmax_temperature
    from imagerec.errors import DataError
    from imagerec.evaluation.data import load_eval_set, predict_raw
    from imagerec.version import __version__

    if top_k < 1:
        raise DataError(f"--top-k must be at least 1, got {top_k}")
    evalset = load_eval_set(clf, data, split)
    raw = predict_raw(clf, evalset.images)
    probs = softmax_temperature(raw, clf.temperature)
    metrics = compute_metrics(evalset.y, probs, clf.labels, top_k)
    conf = probs.max(axis=1)
    metrics.update(
        source=evalset.source,
        split=split if data is None else None,
        skipped_images=evalset.skipped,
        temperature=clf.temperature,
        threshold=clf.threshold,
        model_sha256=clf.version,
        tta="hflip" if getattr(clf, "tta", False) else None,
        imagerec_version=__version__,
    )
    if clf.temperature != 1.0:
        from imagerec.evaluation.metrics import expected_calibration_error

        metrics["ece_uncalibrated"] = expected_calibration_error(evalset.y, raw)
    if clf.threshold is not None:
        kept = conf >= clf.threshold
        metrics["coverage"] = float(kept.mean())
        metrics["accuracy_answered"] = (
            float((probs.argmax(1) == evalset.y)[kept].mean()) if kept.any() else None
        )
    if write:
        _write_outputs(clf, evalset, probs, metrics)
    return metrics


def _write_outputs(clf, evalset, probs: np.ndarray, metrics: dict[str, Any]) -> None:
    from imagerec.errors import DataError
    from imagerec.evaluation import issues as issues_mod
    from imagerec.evaluation.report import label_issue_gallery, write_pictures, write_predictions
    from imagerec.utils import atomic_write_json, read_json

    out = clf.run_dir.evaluation
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "metrics.json", metrics)
    write_predictions(out / "predictions.csv", evalset.paths, evalset.y, probs, clf.labels)
    write_pictures(clf, evalset, probs, metrics)
    issues_path = out / "label_issues.json"
    if not issues_path.exists() or issues_path.stat().st_mtime < clf.run_dir.model.stat().st_mtime:
        try:  # the cheap, out-of-sample part; `imagerec data issues` adds the training images
            rows = find_label_issues(clf, splits=("val",), limit=REPORT_ISSUES)
        except DataError:
            rows = []
        issues_mod.write_issues(clf.run_dir, rows)
    label_issue_gallery(clf, read_json(issues_path))
    write_report(clf.run_dir)
