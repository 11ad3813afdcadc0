"""One evaluation of a loaded Classifier: metrics, ``RUN/evaluation/`` files, pictures and the report.

The facade loads (``imagerec.evaluate(run)``, ``Classifier.evaluate``); this module only takes a Classifier.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from imagerec.evaluation.issues import find_label_issues, write_issues
from imagerec.evaluation.metrics import compute_metrics, expected_calibration_error
from imagerec.evaluation.multilabel import evaluate_multilabel
from imagerec.evaluation.report import label_issue_gallery, write_pictures, write_predictions, write_report
from imagerec.settings import EvaluateSettings

if TYPE_CHECKING:
    from imagerec.classifier import Classifier

REPORT_ISSUES = 24
EVAL_BATCH = 256


def evaluate_classifier(
    clf: Classifier,
    data: str | None = None,
    split: str = EvaluateSettings.split,
    top_k: int = EvaluateSettings.top_k,
    write: bool = True,
    ood: str | None = None,
) -> dict[str, Any]:
    """Metrics of ``clf`` on its run's ``split`` or on ``data`` (what ``Classifier.evaluate`` returns).

    Args:
        clf: a loaded :class:`imagerec.Classifier`.
        data: another dataset with the run's class names (None: the run's own manifest).
        split: which split of the manifest (or of ``data`` when it has fixed splits).
        top_k: k of ``top_k_accuracy``.
        write: write ``RUN/evaluation/`` (metrics.json, predictions.csv, pictures, report.html).
        ood: a folder (or ``builtin:NAME``) of images of none of the classes: adds ``"ood"`` (AUROC and FPR at 95%
            TPR of the OOD score and of the max-softmax baseline, see :mod:`imagerec.evaluation.ood`).

    Returns:
        The content of ``metrics.json``.
    """
    from imagerec.evaluation.data import load_eval_set, require_classifier
    from imagerec.runtime import predict_in_batches
    from imagerec.version import __version__

    require_classifier(clf, "evaluate")
    EvaluateSettings(split=split, top_k=top_k).validate()
    evalset = load_eval_set(clf, data, split)
    if clf.task == "multilabel":  # per-class thresholds, micro/macro F1, mAP (see evaluation/multilabel.py)
        metrics = evaluate_multilabel(clf, evalset, split if data is None else None, EVAL_BATCH, write)
        if write and ood is None:
            write_report(clf.run_dir)
        return with_ood(clf, evalset, metrics, ood, write)
    raw = predict_in_batches(clf.raw_proba, evalset.images, EVAL_BATCH)
    probs = clf.calibrated(raw)
    metrics = compute_metrics(evalset.y, probs, clf.labels, top_k)
    conf = probs.max(axis=1)
    metrics.update(
        source=evalset.source,
        split=split if data is None else None,
        skipped_images=evalset.skipped,
        temperature=clf.temperature,
        threshold=clf.threshold,
        model_sha256=clf.version,
        runtime=clf.runtime,  # which runtime produced these numbers (auto may pick an export)
        tta="hflip" if getattr(clf, "tta", False) else None,
        imagerec_version=__version__,
    )
    if clf.temperature != 1.0:
        metrics["ece_uncalibrated"] = expected_calibration_error(evalset.y, raw)
    if clf.threshold is not None:
        kept = conf >= clf.threshold
        metrics["coverage"] = float(kept.mean())
        metrics["accuracy_answered"] = (
            float((probs.argmax(1) == evalset.y)[kept].mean()) if kept.any() else None
        )
    if write:
        write_outputs(clf, evalset, probs, metrics)
    return with_ood(clf, evalset, metrics, ood, write)


def with_ood(clf: Classifier, evalset, metrics: dict[str, Any], ood: str | None, write: bool) -> dict[str, Any]:
    """``metrics`` with the ``"ood"`` block for the foreign images of ``ood`` (None: unchanged); with ``write``,
    metrics.json again, ``ood_scores.png`` and the report."""
    if ood is not None:
        from imagerec.evaluation.ood import ood_metrics, ood_png
        from imagerec.utils import atomic_write_json

        block = ood_metrics(clf, evalset.images, ood, EVAL_BATCH)
        metrics["ood"] = {k: v for k, v in block.items() if k != "_scores"}
        if write:
            atomic_write_json(clf.run_dir.evaluation / "metrics.json", metrics)
            ood_png(block, clf.run_dir.evaluation / "ood_scores.png")
            write_report(clf.run_dir)
    return metrics


def write_outputs(clf: Classifier, evalset, probs: np.ndarray, metrics: dict[str, Any]) -> None:
    """``RUN/evaluation/``: metrics.json, predictions.csv, the pictures, label issues (val) and report.html."""
    from imagerec.errors import DataError
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
        write_issues(clf.run_dir, rows)
    label_issue_gallery(clf, read_json(issues_path))
    write_report(clf.run_dir)
