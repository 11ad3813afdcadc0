"""``imagerec compare OLD NEW --gate``: refuse a NEW model that is worse than OLD on one fixed test set.

Both runs answer the *same* images: OLD's test split (its manifest), or ``data`` when given; NEW's labels are mapped
onto OLD's classes by name (NEW may know more classes; it must know all of OLD's). NEW fails the gate where it falls
more than ``tolerance`` below OLD in accuracy (multi-label runs: mAP), in macro F1 over OLD's classes, or in any of
OLD's classes' recall or F1 (for a class: more than ``tolerance`` and more than twice the figure's sampling standard
error over that class's test images, :func:`class_tolerance`). Both runs must be of one task (single-label or multi-label).

Example:
    >>> result = gate_runs(Classifier.load("runs/v1"), Classifier.load("runs/v2"))
    >>> result.passed, result.failures
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from imagerec.errors import ImagerecError
from imagerec.settings import EvaluateSettings

GATE_BATCH = 256


@dataclass
class GateResult:
    """The figures of both runs on the same images and the readable failures (empty: the gate passed)."""

    old: dict[str, Any]
    new: dict[str, Any]
    num_images: int
    source: str
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


def _figures(clf, images: np.ndarray, y: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Accuracy (multi-label: mAP over ``classes``), macro F1 over ``classes`` and each of ``classes``' recall and
    F1 of ``clf`` on ``images``."""
    from imagerec.evaluation.metrics import compute_metrics, multilabel_metrics
    from imagerec.runtime import predict_in_batches

    probs = clf.calibrated(predict_in_batches(clf.raw_proba, images, GATE_BATCH))
    if clf.task == "multilabel":
        metrics = multilabel_metrics(y, probs, clf.labels, clf.thresholds)
        aps = [metrics["per_class"][name]["ap"] for name in classes]
        overall = ("mAP", float(np.mean([ap for ap in aps if ap is not None] or [0.0])))
    else:
        metrics = compute_metrics(y, probs, clf.labels)
        overall = ("accuracy", metrics["accuracy"])
    per_class = {name: metrics["per_class"][name] for name in classes}
    return {
        overall[0]: overall[1],
        "macro_f1": float(np.mean([row["f1"] for row in per_class.values()])),
        "per_class": {
            n: {"recall": r["recall"], "f1": r["f1"], "support": r["support"]} for n, r in per_class.items()
        },
    }


def _new_view(old, new, evalset) -> tuple[np.ndarray, np.ndarray]:
    """OLD's evaluation images and labels as NEW sees them: decoded at NEW's input size, labels by name."""
    missing = [name for name in old.labels if name not in new.labels]
    if missing:
        raise ImagerecError(
            f"run {str(new.run_dir.path)!r} does not know class(es) {missing} of {str(old.run_dir.path)!r}; "
            "the gate compares runs over OLD's classes (NEW may add classes, not drop them)"
        )
    index = np.array([new.labels.index(name) for name in old.labels], dtype=np.int64)
    if evalset.y.ndim == 2:  # multi-hot rows: OLD's columns moved to NEW's, NEW's own classes absent
        y = np.zeros((len(evalset.y), len(new.labels)), dtype=evalset.y.dtype)
        y[:, index] = evalset.y
    else:
        y = index[evalset.y]
    same_input = (old.image_size, old.channels, old.resize) == (new.image_size, new.channels, new.resize)
    if same_input:
        return evalset.images, y
    from imagerec.data.pipeline import PipelineSpec, decode_all

    return decode_all(evalset.paths, PipelineSpec(new.image_size, new.channels, new.resize)), y


def class_tolerance(value: float, support: int, tolerance: float) -> float:
    """How far a class's recall or F1 may fall: ``tolerance``, or twice the figure's sampling standard error
    ``sqrt(p (1 - p) / support)`` when that is larger.

    Why: a class's figure over a few hundred test images moves by more than a point between two equally good
    models (recall 0.80 over 1,000 images: standard error 0.013), so a one-point bar per class would fail most
    retrains of a 10-class model on noise alone and teach operators to ignore the gate. The overall figures (all
    the test images) keep ``tolerance``; a class that really got worse (a damaged model: tens of points) still
    fails.
    """
    p = min(max(float(value), 0.0), 1.0)
    return max(tolerance, 2.0 * float(np.sqrt(p * (1.0 - p) / max(int(support), 1))))


def _failures(old: dict[str, Any], new: dict[str, Any], tolerance: float) -> list[str]:
    def worse(what: str, a: float, b: float, allowed: float = tolerance) -> str | None:
        if b < a - allowed:
            return f"{what}: {a:.4f} -> {b:.4f} ({b - a:+.4f}, tolerance {allowed:.4g})"
        return None

    overall = "accuracy" if "accuracy" in old else "mAP"
    lines = [
        worse(overall, old[overall], new[overall]),
        worse("macro F1", old["macro_f1"], new["macro_f1"]),
    ]
    for name, row in old["per_class"].items():
        if not row["support"]:
            continue
        for metric in ("recall", "f1"):
            allowed = class_tolerance(row[metric], row["support"], tolerance)
            lines.append(worse(f"class {name!r} {metric}", row[metric], new["per_class"][name][metric], allowed))
    return [line for line in lines if line]


def gate_runs(
    old, new, data: str | None = None, tolerance: float = EvaluateSettings.gate_tolerance
) -> GateResult:
    """Whether loaded Classifier ``new`` is no worse than ``old`` (within ``tolerance``) on the same test images.

    Args:
        old: the model in production (a loaded :class:`imagerec.Classifier`).
        new: the candidate.
        data: a dataset of OLD's classes to test both on (None: OLD's test split, for both).
        tolerance: how far below OLD any figure of NEW may fall (0.01: one point).

    Returns:
        A :class:`GateResult`; ``failures`` names each figure and class where NEW is worse.

    Raises:
        ImagerecError: runs of different tasks, a tolerance out of range, or NEW lacking a class of OLD.
    """
    from imagerec.evaluation.data import load_eval_set, require_classifier

    EvaluateSettings(gate_tolerance=tolerance).validate()
    for clf in (old, new):
        require_classifier(clf, "gate_runs")
    if old.task != new.task:
        raise ImagerecError(
            f"compare --gate compares runs of one task; {str(old.run_dir.path)!r} is {old.task}, "
            f"{str(new.run_dir.path)!r} is {new.task}"
        )
    evalset = load_eval_set(old, data, "test")
    images, y = _new_view(old, new, evalset)
    before = _figures(old, evalset.images, evalset.y, old.labels)
    after = _figures(new, images, y, old.labels)
    return GateResult(before, after, len(evalset.y), evalset.source, _failures(before, after, tolerance))
