"""Classification metrics from one array of probabilities, computed by scikit-learn.

Every per-class figure uses ``labels=range(num_classes)`` and ``zero_division=0``, so a class that is never
predicted (precision 0) and a class absent from the evaluated images (support 0, recall 0) keep their row, and the
macro average is over all of the run's classes — the same numbers as
``classification_report(y, pred, labels=range(K), zero_division=0, output_dict=True)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from imagerec.settings import EvaluateSettings

ECE_BINS = 15


def reliability_bins(y_true: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> list[dict[str, float]]:
    """Equal-width confidence bins: ``count``, mean ``confidence`` and ``accuracy`` of the top-1 answers in each."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    # bin i holds (edges[i], edges[i+1]]; confidence exactly 0 goes to the first bin
    index = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    out = []
    for i in range(bins):
        mask = index == i
        n = int(mask.sum())
        out.append(
            {
                "lower": float(edges[i]),
                "upper": float(edges[i + 1]),
                "count": n,
                "confidence": float(conf[mask].mean()) if n else 0.0,
                "accuracy": float(correct[mask].mean()) if n else 0.0,
            }
        )
    return out


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: the count-weighted mean gap between confidence and accuracy over equal-width confidence bins."""
    n = len(y_true)
    if n == 0:
        return 0.0
    return float(
        sum(
            b["count"] / n * abs(b["accuracy"] - b["confidence"])
            for b in reliability_bins(y_true, probs, bins)
        )
    )


def top_k_accuracy(y_true: np.ndarray, probs: np.ndarray, k: int) -> float:
    """scikit-learn's ``top_k_accuracy_score`` over all of the run's classes (``k`` clipped to the class count)."""
    from sklearn.metrics import top_k_accuracy_score

    num_classes = probs.shape[1]
    k = max(1, min(k, num_classes))
    if k == num_classes:
        return 1.0  # every class is in the top k (scikit-learn warns and says the same)
    score = probs[:, 1] if num_classes == 2 else probs
    return float(top_k_accuracy_score(y_true, score, k=k, labels=np.arange(num_classes)))


def roc_auc_ovr(y_true: np.ndarray, probs: np.ndarray) -> float | None:
    """One-vs-rest ROC AUC (macro), or None where it is undefined (a class absent from ``y_true``)."""
    from sklearn.metrics import roc_auc_score

    num_classes = probs.shape[1]
    if len(np.unique(y_true)) != num_classes:
        return None
    if num_classes == 2:
        return float(roc_auc_score(y_true, probs[:, 1]))
    probs = probs.astype(np.float64)
    # float32 rounding would trip scikit-learn's sum-to-one check
    probs = probs / probs.sum(axis=1, keepdims=True)
    return float(roc_auc_score(y_true, probs, multi_class="ovr", labels=np.arange(num_classes)))


def compute_metrics(
    y_true: np.ndarray, probs: np.ndarray, labels: list[str], top_k: int = EvaluateSettings.top_k
) -> dict[str, Any]:
    """The metrics.json content for integer labels ``y_true`` (N,) and probabilities ``probs`` (N, K).

    Args:
        y_true: true class indices into ``labels``.
        probs: predicted probabilities, one column per entry of ``labels``.
        labels: the run's class names, in output order.
        top_k: k of ``top_k_accuracy`` (clipped to the number of classes).

    Returns:
        ``accuracy``, ``top_k``, ``top_k_accuracy``, ``macro``/``weighted`` (precision, recall, f1), ``per_class``
        (name -> precision, recall, f1, support), ``confusion_matrix`` (rows = true class in ``labels`` order),
        ``labels``, ``num_images``, ``ece``, ``reliability`` (the ECE bins) and ``roc_auc_ovr`` (None where
        undefined).
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float32)
    index = np.arange(len(labels))
    y_pred = probs.argmax(axis=1)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=index, zero_division=0)
    averages = {}
    for avg in ("macro", "weighted"):
        ap, ar, af, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=index, average=avg, zero_division=0
        )
        averages[avg] = {"precision": float(ap), "recall": float(ar), "f1": float(af)}
    k = max(1, min(top_k, len(labels)))
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "top_k": k,
        "top_k_accuracy": top_k_accuracy(y_true, probs, k),
        **averages,
        "per_class": {
            name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, name in enumerate(labels)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=index).tolist(),
        "labels": list(labels),
        "num_images": int(len(y_true)),
        "ece": expected_calibration_error(y_true, probs),
        "reliability": reliability_bins(y_true, probs),
        "roc_auc_ovr": roc_auc_ovr(y_true, probs),
    }


# --- multi-label ----------------------------------------------------------------------------------------------------
def f1_thresholds(y_true: np.ndarray, probs: np.ndarray, default: float = 0.5) -> np.ndarray:
    """Per-class thresholds that maximise each class's F1 on ``(y_true, probs)`` (multi-hot ``(N, K)``).

    A class answers when its probability is ``>=`` its threshold. Each threshold lies halfway between the lowest
    probability it accepts and the next lower one (not on a training image's value: a margin both ways); a
    class without a positive image keeps ``default``.
    """
    y_true = np.asarray(y_true) > 0.5
    probs = np.asarray(probs, dtype=np.float64)
    out = np.full(probs.shape[1], default, dtype=np.float64)
    for k in range(probs.shape[1]):
        positives = int(y_true[:, k].sum())
        if positives == 0:
            continue
        order = np.argsort(-probs[:, k], kind="stable")
        scores, hits = probs[order, k], y_true[order, k]
        tp = np.cumsum(hits)
        fp = np.arange(1, len(hits) + 1) - tp
        f1 = 2 * tp / (tp + fp + positives)  # 2TP / (2TP + FP + FN), FN = positives - TP
        f1[:-1][scores[1:] == scores[:-1]] = -1.0  # cut only between different probabilities
        best = int(np.argmax(f1))
        below = scores[best + 1] if best + 1 < len(scores) else 0.0
        out[k] = (scores[best] + below) / 2
    return out


def multilabel_metrics(
    y_true: np.ndarray, probs: np.ndarray, labels: list[str], thresholds: np.ndarray
) -> dict[str, Any]:
    """The metrics.json content of a multi-label run, computed by scikit-learn.

    Args:
        y_true: multi-hot true labels ``(N, K)``.
        probs: per-class probabilities ``(N, K)``.
        labels: the run's class names, in output order.
        thresholds: per-class thresholds (a class is predicted when its probability is ``>=`` its threshold).

    Returns:
        ``task`` ("multilabel"), ``micro``/``macro``/``weighted`` (precision, recall, f1: ``precision_recall_fscore_support``
        with ``zero_division=0``), ``mAP`` (the mean of ``average_precision_score`` over the classes with at least one
        positive image), ``per_class`` (name -> precision, recall, f1, ap (None without a positive), support,
        threshold), ``subset_accuracy`` (``accuracy_score``), ``hamming_loss``, ``co_occurrence`` (rows: true
        class, columns: predicted class, counts of images with both), ``labels``, ``num_images``,
        ``label_cardinality`` and ``predicted_cardinality`` (mean labels per image).
    """
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        hamming_loss,
        precision_recall_fscore_support,
    )

    y_true = (np.asarray(y_true) > 0.5).astype(np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    y_pred = (probs >= np.asarray(thresholds, dtype=np.float64)[None, :]).astype(np.int64)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, average=None, zero_division=0)
    ap = [
        float(average_precision_score(y_true[:, k], probs[:, k])) if s[k] else None
        for k in range(len(labels))
    ]
    averages = {}
    for avg in ("micro", "macro", "weighted"):
        ap_, ar, af, _ = precision_recall_fscore_support(y_true, y_pred, average=avg, zero_division=0)
        averages[avg] = {"precision": float(ap_), "recall": float(ar), "f1": float(af)}
    defined = [a for a in ap if a is not None]
    return {
        "task": "multilabel",
        **averages,
        "mAP": float(np.mean(defined)) if defined else None,
        "per_class": {
            name: {
                "precision": float(p[i]),
                "recall": float(r[i]),
                "f1": float(f[i]),
                "ap": ap[i],
                "support": int(s[i]),
                "threshold": float(thresholds[i]),
            }
            for i, name in enumerate(labels)
        },
        "subset_accuracy": float(accuracy_score(y_true, y_pred)),
        "hamming_loss": float(hamming_loss(y_true, y_pred)),
        "co_occurrence": (y_true.T @ y_pred).tolist(),
        "labels": list(labels),
        "num_images": int(len(y_true)),
        "label_cardinality": float(y_true.sum(axis=1).mean()) if len(y_true) else 0.0,
        "predicted_cardinality": float(y_pred.sum(axis=1).mean()) if len(y_true) else 0.0,
    }


def precision_recall_points(
    y_true: np.ndarray, probs: np.ndarray, labels: list[str], thresholds: np.ndarray
) -> dict[str, dict[str, Any]]:
    """Per class: scikit-learn's ``precision_recall_curve``, its ``average_precision_score`` (None without a
    positive image) and ``point``, the (recall, precision) at the class's threshold (the PR-curve picture)."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    y_true = np.asarray(y_true) > 0.5
    out = {}
    for k, name in enumerate(labels):
        if not y_true[:, k].any():
            out[name] = {"precision": np.array([]), "recall": np.array([]), "ap": None, "point": None}
            continue
        precision, recall, _ = precision_recall_curve(y_true[:, k], probs[:, k])
        chosen = probs[:, k] >= thresholds[k]
        tp = int((chosen & y_true[:, k]).sum())
        point = (tp / int(y_true[:, k].sum()), tp / int(chosen.sum()) if chosen.any() else 1.0)
        out[name] = {
            "precision": precision,
            "recall": recall,
            "ap": float(average_precision_score(y_true[:, k], probs[:, k])),
            "point": point,
        }
    return out
