"""Temperature scaling fitted on the validation split, and a suggested rejection threshold.

Temperature scaling (Guo et al., 2017) divides the logits by one scalar ``T`` chosen to minimise the negative
log-likelihood on held-out data. It never changes the predicted class, only how confident the answer is. Our
models end in a softmax, so the logits are recovered as ``log(p)`` (equal to the logits up to a per-row constant,
which softmax ignores).

The threshold answers "when should the model say *unknown*?": it is the lowest calibrated confidence ``t`` such
that the validation images answered with confidence >= ``t`` are right at least ``target_accuracy`` of the time
(selective accuracy). Images below it are answered ``unknown`` by ``predict`` (CLI, API, server, video).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from imagerec.errors import RunError
from imagerec.evaluation.metrics import expected_calibration_error
from imagerec.prediction import softmax_temperature
from imagerec.settings import CalibrateSettings

if TYPE_CHECKING:
    from imagerec.classifier import Classifier

CALIBRATION_BATCH = 256
T_BOUNDS = (0.05, 20.0)


def nll(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes."""
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0))))


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    """The temperature minimising the NLL of ``softmax(log(probs) / T)`` on ``(probs, y)``.

    Args:
        probs: uncalibrated probabilities (N, K) on held-out images.
        y: their true class indices (N,).
    """
    from scipy.optimize import minimize_scalar

    probs = np.asarray(probs, dtype=np.float64)
    lo, hi = np.log(T_BOUNDS[0]), np.log(T_BOUNDS[1])
    res = minimize_scalar(
        lambda log_t: nll(softmax_temperature(probs, float(np.exp(log_t))), y),
        bounds=(lo, hi),
        method="bounded",
    )
    return float(np.exp(res.x))


def suggest_threshold(probs: np.ndarray, y: np.ndarray, target_accuracy: float) -> tuple[float | None, float]:
    """The lowest confidence keeping selective accuracy >= ``target_accuracy``, and the fraction of images kept.

    Returns ``(0.0, 1.0)`` when every answer together already meets the target and ``(None, 0.0)`` when no
    threshold does.
    """
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(np.float64)
    order = np.argsort(-conf, kind="stable")
    conf, correct = conf[order], correct[order]
    kept_accuracy = np.cumsum(correct) / np.arange(1, len(correct) + 1)
    ok = np.nonzero(kept_accuracy >= target_accuracy)[0]
    if len(ok) == 0:
        return None, 0.0
    last = int(ok[-1])  # keep the largest prefix (highest confidences first) that meets the target
    if last == len(conf) - 1:
        return 0.0, 1.0
    threshold = float(conf[last])
    return threshold, float((conf >= threshold).mean())


def calibration_record(
    raw: np.ndarray, y: np.ndarray, split: str, target_accuracy: float | None
) -> dict[str, Any]:
    """The temperature fitted on uncalibrated ``raw`` probabilities of the ``split`` images labelled ``y``, the
    ``unknown`` threshold for ``target_accuracy`` (None: no threshold), and the figures before and after.

    What ``calibration.json`` holds; training writes it for the val split at its end, ``calibrate`` re-fits it.
    """
    raw = np.asarray(raw, dtype=np.float64)
    temperature = fit_temperature(raw, y)
    calibrated = softmax_temperature(raw, temperature)
    threshold, coverage = (None, 1.0)
    if target_accuracy is not None:
        threshold, coverage = suggest_threshold(calibrated, y, target_accuracy)
    return {
        "temperature": round(temperature, 6),
        "threshold": None if threshold is None else round(threshold, 6),
        "target_accuracy": target_accuracy,
        "coverage": round(coverage, 6),
        "ece_before": expected_calibration_error(y, raw),
        "ece_after": expected_calibration_error(y, calibrated),
        "nll_before": nll(raw, y),
        "nll_after": nll(calibrated, y),
        "accuracy": float((raw.argmax(1) == y).mean()),
        "num_images": int(len(y)),
        "split": split,
    }


def calibrate(
    clf: Classifier,
    split: str = CalibrateSettings.split,
    target_accuracy: float | None = CalibrateSettings.target_accuracy,
    ood_keep: float | None = CalibrateSettings.ood_keep,
) -> dict[str, Any]:
    """Fit temperature scaling on the run's ``split`` and write ``RUN/calibration.json``.

    With an embedding reference (``RUN/reference.npz``, written by training; built here from the train split when
    missing) it also picks the out-of-distribution threshold: the score that keeps ``ood_keep`` of the split.

    Args:
        clf: a loaded :class:`imagerec.Classifier`; it answers with the new calibration at once.
        split: the held-out split to fit on (``val``; ``test`` only if you accept an optimistic test score).
        target_accuracy: the selective accuracy the suggested threshold aims for; None stores no threshold.
        ood_keep: the share of the split's images the OOD threshold keeps (its true-positive rate); None: none.

    Returns:
        The calibration record: ``temperature``, ``threshold``, ``target_accuracy``, ``coverage``, ``ece_before``,
        ``ece_after``, ``nll_before``, ``nll_after``, ``num_images``, ``split``.

    Raises:
        DataError: the split is empty.
        ImagerecError: the target is not in (0, 1].

    Example:
        >>> imagerec.Classifier.load("runs/fmnist").calibrate()["temperature"]
    """
    from imagerec.evaluation.data import require_classifier, run_split
    from imagerec.runtime import predict_in_batches
    from imagerec.utils import atomic_write_json

    require_classifier(clf, "calibrate")
    CalibrateSettings(target_accuracy=target_accuracy, split=split, ood_keep=ood_keep).validate()
    data = run_split(clf, split)
    raw, emb = predict_in_batches(clf.raw_outputs, data.images, CALIBRATION_BATCH, embedding=True)
    if getattr(clf, "task", "multiclass") == "multilabel":  # sigmoid outputs: re-tune the per-class thresholds
        from imagerec.evaluation.multilabel import tune_thresholds

        tuned = tune_thresholds(clf, split, data, raw)  # (no temperature: calibration.json holds the OOD threshold)
        record = {"temperature": 1.0, "threshold": None, "split": split, "num_images": int(len(data.y)),
                  "task": "multilabel", **ood_record(clf, emb, ood_keep)}  # fmt: skip
        atomic_write_json(clf.run_dir.calibration, record)
        clf.ood_threshold = record.get("ood_threshold")
        return {**tuned, **record}
    record = {**calibration_record(raw, data.y, split, target_accuracy), **ood_record(clf, emb, ood_keep)}
    atomic_write_json(clf.run_dir.calibration, record)
    clf.temperature, clf.threshold = record["temperature"], record["threshold"]  # as a reload reads them
    clf.ood_threshold = record.get("ood_threshold")
    if split == "val":  # the drift baseline: the validation answers as the new calibration gives them
        from imagerec.monitoring.drift import write_baseline

        write_baseline(clf, data.images)
    return record


def ood_record(clf: Classifier, emb: np.ndarray | None, keep: float | None) -> dict[str, Any]:
    """``ood_threshold`` (keeping ``keep`` of the split's embeddings ``emb``) and ``ood_keep``; the run's reference
    is built from its train split first when it has none. Empty without embeddings (an old export)."""
    from imagerec.openworld import ood_threshold
    from imagerec.openworld.reference import Reference

    if emb is None or keep is None:
        return {}
    if clf.reference is None:
        from imagerec.evaluation.data import run_split

        train = run_split(clf, "train")
        reference = Reference.of_images(clf.raw_outputs, train.images, train.y, len(clf.labels), CALIBRATION_BATCH)
        if reference is None:
            raise RunError("no training embeddings to build the out-of-distribution reference from")
        reference.save(clf.run_dir.reference)
    threshold = ood_threshold(clf.ood_scores(emb), keep)
    return {"ood_threshold": None if threshold is None else round(threshold, 6), "ood_keep": keep}
