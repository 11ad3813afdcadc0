"""How well a run tells its classes from images of none of them: ``imagerec evaluate RUN --ood DIR``.

Both scores rank images by "unlike the training data" (higher = further): the run's out-of-distribution score
(:mod:`imagerec.openworld`) and the max-softmax baseline (``1 - max p``, Hendrycks & Gimpel, 2017). In-distribution
images are the evaluated split; out-of-distribution ones a folder of images that belong to none of the classes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imagerec.errors import DataError, ImageRejected

if TYPE_CHECKING:
    from imagerec.classifier import Classifier

#: the in-distribution true-positive rate at which the false-positive rate is reported
TPR = 0.95


def load_ood_images(clf: Classifier, source: str) -> tuple[np.ndarray, int]:
    """The images of ``source`` (a folder, file or glob; ``builtin:NAME`` = all of a built-in dataset) as the
    model sees them, and how many were skipped as unreadable."""
    from imagerec.data.builtin import materialize
    from imagerec.data.paths import expand_paths

    if source.startswith("builtin:"):
        source = str(materialize(source.split(":", 1)[1]))
    files, _ = expand_paths([source])
    if not files:
        raise DataError(f"--ood {source!r}: no image files found (a folder of images of none of the classes)")
    arrays, skipped = [], 0
    for path in files:
        try:
            arrays.append(clf.preprocess(str(path)))
        except ImageRejected:
            skipped += 1
    if not arrays:
        raise DataError(f"--ood {source!r}: none of its {len(files)} files is a readable image")
    return np.stack(arrays), skipped


def fpr_at_tpr(id_scores: np.ndarray, ood_scores: np.ndarray, tpr: float = TPR) -> float:
    """The share of out-of-distribution images accepted at the threshold that keeps ``tpr`` of in-distribution
    images (scores: higher = more out-of-distribution)."""
    threshold = np.quantile(id_scores, tpr, method="higher")
    return float(np.mean(ood_scores <= threshold))


def separation(id_scores: np.ndarray, ood_scores: np.ndarray) -> tuple[float, float]:
    """``(AUROC, FPR at 95% TPR)`` of scores that should be higher for the out-of-distribution images."""
    from sklearn.metrics import roc_auc_score

    truth = np.r_[np.zeros(len(id_scores)), np.ones(len(ood_scores))]
    return float(roc_auc_score(truth, np.r_[id_scores, ood_scores])), fpr_at_tpr(id_scores, ood_scores)


def ood_metrics(clf: Classifier, id_images: np.ndarray, source: str, batch_size: int) -> dict[str, Any]:
    """The ``"ood"`` block of metrics.json, and the scores for the picture (``_scores``, dropped before writing)."""
    from imagerec.prediction import split_scores
    from imagerec.runtime import predict_in_batches

    ood_images, skipped = load_ood_images(clf, source)
    scores = {}
    for name, images in (("id", id_images), ("ood", ood_images)):
        rows = predict_in_batches(clf.predict_scores, images, batch_size)  # probabilities + the OOD column
        probs, ood = split_scores(rows, len(clf.labels))
        answers = clf.answers(rows)
        scores[name] = {
            "msp": 1.0 - probs.max(axis=1),
            "score": None if ood is None or np.isnan(ood).any() else ood,
            "unknown": float(np.mean([a.label == "unknown" for a in answers])) if answers else 0.0,
        }
    msp_auroc, msp_fpr = separation(scores["id"]["msp"], scores["ood"]["msp"])
    out: dict[str, Any] = {
        "source": source,
        "num_images": int(len(ood_images)),
        "skipped_images": skipped,
        "num_in_distribution": int(len(id_images)),
        "auroc": None,
        "fpr_at_95_tpr": None,
        "msp_auroc": msp_auroc,
        "msp_fpr_at_95_tpr": msp_fpr,
        "ood_answered_unknown": scores["ood"]["unknown"],
        "in_distribution_answered_unknown": scores["id"]["unknown"],
        "method": clf.reference.method if clf.reference is not None else None,
    }
    if scores["id"]["score"] is not None and scores["ood"]["score"] is not None:
        out["auroc"], out["fpr_at_95_tpr"] = separation(scores["id"]["score"], scores["ood"]["score"])
    out["_scores"] = scores
    return out


def ood_png(block: dict[str, Any], path: Path) -> Path:
    """The report's OOD picture: both scores' histograms for in- and out-of-distribution images."""
    from imagerec.evaluation.plots import score_histograms_png

    scores = block["_scores"]
    panels = [(f"OOD score ({block['method']})", "score", block["auroc"]), ("1 - max softmax", "msp", block["msp_auroc"])]
    return score_histograms_png(
        [(f"{title}: AUROC {auroc:.3f}", scores["id"][key], scores["ood"][key]) for title, key, auroc in panels
         if scores["id"][key] is not None],
        ("in-distribution (test)", f"out-of-distribution ({block['num_images']})"),
        path,
    )  # fmt: skip


__all__ = ["TPR", "fpr_at_tpr", "load_ood_images", "ood_metrics", "ood_png", "separation"]
