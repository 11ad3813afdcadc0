"""The evaluation of a multi-label run: metrics equal to scikit-learn's, predictions.csv, pictures, report rows,
and its thresholds: ``thresholds.json``'s record (:func:`thresholds_record`, written by training) and their
re-tuning on a split (:func:`tune_thresholds`, what ``imagerec calibrate`` does for a multi-label run).

``evaluator.evaluate_classifier`` hands a multi-label Classifier's decoded images here. An image's labels are the
classes whose probability reaches the run's per-class threshold (``RUN/thresholds.json``, tuned on validation at
the end of training), as ``Classifier.answers`` gives them. ``RUN/evaluation/`` then holds:

```
metrics.json       "task": "multilabel", micro/macro/weighted, mAP, per_class, subset_accuracy, hamming_loss...
predictions.csv    path, true, predicted (class names joined by ';'), one probability column per class
per_class_f1.png   pr_curves.png (precision-recall per class)   co_occurrence.png (label confusion)
training_curves.png  most_wrong.png (the images whose answers are furthest from their labels)
```
"""

from __future__ import annotations

import csv
import io
from typing import Any

import numpy as np

from imagerec.evaluation import plots
from imagerec.evaluation.metrics import multilabel_metrics
from imagerec.run.layout import DEFAULT_THRESHOLD

MAX_WRONG = 12
TUNE_BATCH = 256


def evaluate_multilabel(clf, evalset, split: str | None, batch_size: int, write: bool) -> dict[str, Any]:
    """The metrics.json content of multi-label ``clf`` on ``evalset`` (its files written when ``write``)."""
    from imagerec.runtime import predict_in_batches
    from imagerec.utils import read_json
    from imagerec.version import __version__

    probs = clf.calibrated(predict_in_batches(clf.raw_proba, evalset.images, batch_size))  # unchanged: T = 1
    metrics = multilabel_metrics(evalset.y, probs, clf.labels, clf.thresholds)
    tuned = read_json(clf.run_dir.thresholds).get("split") if clf.run_dir.thresholds.exists() else None
    metrics.update(
        source=evalset.source,
        split=split,
        skipped_images=evalset.skipped,
        thresholds_from=tuned or "default 0.5",
        model_sha256=clf.version,
        runtime=clf.runtime,
        tta="hflip" if getattr(clf, "tta", False) else None,
        imagerec_version=__version__,
    )
    if write:
        write_outputs(clf, evalset, probs, metrics)
    return metrics


def write_outputs(clf, evalset, probs: np.ndarray, metrics: dict[str, Any]) -> None:
    """metrics.json, predictions.csv and the pictures into ``RUN/evaluation/`` (the caller writes report.html)."""
    from imagerec.evaluation.metrics import precision_recall_points
    from imagerec.utils import atomic_write_json, atomic_write_text

    out = clf.run_dir.evaluation
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("confusion_matrix.png", "reliability.png", "gradcam_wrong.png"):
        (out / stale).unlink(
            missing_ok=True
        )  # single-label pictures of an earlier evaluation must not survive
    atomic_write_json(out / "metrics.json", metrics)
    predicted = probs >= np.asarray(clf.thresholds)[None, :]
    atomic_write_text(
        out / "predictions.csv", predictions_csv(evalset.paths, evalset.y, predicted, probs, clf.labels)
    )
    plots.f1_bars_png(metrics["per_class"], out / "per_class_f1.png")
    plots.pr_curves_png(
        precision_recall_points(evalset.y, probs, clf.labels, clf.thresholds), out / "pr_curves.png"
    )
    support = [metrics["per_class"][name]["support"] for name in clf.labels]
    plots.co_occurrence_png(metrics["co_occurrence"], support, clf.labels, out / "co_occurrence.png")
    plots.training_curves_png(plots.read_history(clf.run_dir.history), out / "training_curves.png")
    (out / "most_wrong.png").unlink(missing_ok=True)
    wrong = furthest(evalset.y, probs)
    captions = [
        f"true: {_names(evalset.y[i] > 0.5, clf.labels)}\npred: {_names(predicted[i], clf.labels)}"
        for i in wrong
    ]
    plots.image_grid_png([evalset.images[i] for i in wrong], captions, out / "most_wrong.png")


def furthest(y: np.ndarray, probs: np.ndarray, limit: int = MAX_WRONG) -> list[int]:
    """Indices of the images whose probabilities are furthest (L1) from their labels, worst first."""
    distance = np.abs(np.asarray(y, dtype=np.float64) - probs).sum(axis=1)
    order = np.argsort(-distance, kind="stable")[:limit]
    return [int(i) for i in order if distance[i] > 0.5]


def _names(row: np.ndarray, labels: list[str]) -> str:
    return ", ".join(labels[j] for j in np.flatnonzero(row)) or "(none)"


def predictions_csv(
    paths: list[str], y: np.ndarray, predicted: np.ndarray, probs: np.ndarray, labels: list[str]
) -> str:
    """``path,true,predicted,<class>...``: label sets joined by ';', then each class's probability."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(("path", "true", "predicted", *labels))
    for i, path in enumerate(paths):
        true = ";".join(labels[j] for j in np.flatnonzero(y[i] > 0.5))
        pred = ";".join(labels[j] for j in np.flatnonzero(predicted[i]))
        writer.writerow((path, true, pred, *(f"{p:.6f}" for p in probs[i])))
    return buf.getvalue()


def report_cards(metrics: dict[str, Any]) -> list[tuple[str, Any]]:
    """The headline figures of report.html for a multi-label evaluation."""
    return [
        ("macro F1", metrics["macro"]["f1"]),
        ("micro F1", metrics["micro"]["f1"]),
        ("mAP", metrics["mAP"]),
        ("subset accuracy", metrics["subset_accuracy"]),
        ("Hamming loss", metrics["hamming_loss"]),
        ("labels per image", metrics["label_cardinality"]),
        ("images", metrics["num_images"]),
    ]


def report_rows(metrics: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """The per-class table of report.html for a multi-label evaluation: header and rows."""
    header = ["class", "precision", "recall", "F1", "AP", "threshold", "support"]
    rows: list[list[Any]] = [
        [n, c["precision"], c["recall"], c["f1"], c["ap"], c["threshold"], c["support"]]
        for n, c in metrics["per_class"].items()
    ]
    for avg in ("micro", "macro", "weighted"):
        m = metrics[avg]
        ap = metrics["mAP"] if avg == "macro" else None
        rows.append([f"{avg} avg", m["precision"], m["recall"], m["f1"], ap, None, metrics["num_images"]])
    return header, rows


def thresholds_record(
    class_names: list[str], thresholds: np.ndarray, split: str | None, num_images: int
) -> dict[str, Any]:
    """The content of ``RUN/thresholds.json``: class -> threshold, and where they were tuned."""
    return {
        "thresholds": {name: round(float(t), 6) for name, t in zip(class_names, thresholds, strict=True)},
        "split": split,
        "num_images": num_images,
        "rule": "per-class F1 maximum" if split else f"default {DEFAULT_THRESHOLD} (no validation split)",
    }


def tune_thresholds(clf, split: str = "val", data=None, probs: np.ndarray | None = None) -> dict[str, Any]:
    """``imagerec calibrate`` for a multi-label run: re-tune its per-class thresholds on ``split``.

    A multi-label run has no softmax temperature; what calibrate fits for it is each class's threshold, as the end
    of training does (the F1 maximum of each class, :func:`imagerec.evaluation.metrics.f1_thresholds`), on the
    images of ``split``. ``RUN/thresholds.json`` is rewritten atomically and ``clf`` answers with the new
    thresholds at once (exports keep the copy they were made with until the run is exported again).

    Returns:
        The new thresholds.json record (``thresholds``, ``split``, ``num_images``, ``rule``), plus ``task``,
        ``previous`` (class -> the threshold replaced) and the split's macro and micro F1 ``before``/``after``.

    Raises:
        DataError: the split is empty.
    """
    from imagerec.evaluation.data import require_classifier, run_split
    from imagerec.evaluation.metrics import f1_thresholds
    from imagerec.runtime import predict_in_batches
    from imagerec.settings import CalibrateSettings
    from imagerec.utils import atomic_write_json

    require_classifier(clf, "calibrate")
    CalibrateSettings(split=split).validate()
    if data is None or probs is None:  # calibrate passes the split it already decoded and ran
        data = run_split(clf, split)
        probs = predict_in_batches(clf.raw_proba, data.images, TUNE_BATCH)  # sigmoid outputs, used as they are
    record = thresholds_record(clf.labels, f1_thresholds(data.y, probs), split, len(data.y))
    tuned = np.array(list(record["thresholds"].values()), np.float32)  # as a reload reads them
    f1 = {
        when: multilabel_metrics(data.y, probs, clf.labels, cut)
        for when, cut in (("before", clf.thresholds), ("after", tuned))
    }
    atomic_write_json(clf.run_dir.thresholds, record)
    previous = dict(zip(clf.labels, (round(float(t), 6) for t in clf.thresholds), strict=True))
    clf.thresholds = tuned
    figures = {f"{avg}_f1_{when}": m[avg]["f1"] for when, m in f1.items() for avg in ("macro", "micro")}
    return {**record, "task": "multilabel", "previous": previous, **figures}


def refuse_multilabel(clf, verb: str) -> None:
    """One clear error for a verb that reads one class per image, given a multi-label run."""
    from imagerec.errors import ImagerecError

    if getattr(clf, "task", "multiclass") == "multilabel":
        raise ImagerecError(
            f"{verb} reads one class per image; run {str(clf.run_dir.path)!r} is multi-label (not supported by "
            f"{verb} yet): see 'imagerec evaluate {clf.run_dir.path}' for its per-class figures"
        )
