"""Which epoch's model a run keeps: the one rule, shared by the best-model callback, its backup and the plots.

The highest validation accuracy; among epochs tied on it, the lowest validation loss. On a small validation set
many epochs tie (45 images: accuracy moves in steps of 2.2 points, and several epochs reach 1.0), and keeping the
*first* of them kept an early epoch whose loss was still high. On a 3-class texture folder with 45 validation images
(bench/epoch_selection.py, 12 seeds of the defaults, each kept model scored on 900 fresh images): first best
accuracy 0.907-0.984 (mean 0.956, up to 7.8 points below the run's best epoch); ties to the lower loss 0.919-0.992
(mean 0.972, at most 2.2 points below). On a large validation set ties are rare and the rule is plain best accuracy.
Without a validation split: the last epoch (training accuracy is measured on augmented images while the weights
change). A multi-label run has no accuracy: it keeps the epoch of the lowest validation loss.

Pure Python (no TensorFlow): the plots read the same rule from a run's history.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

#: Below these, the choice of epoch is mostly chance: say so once, before training.
MIN_VAL_IMAGES = 100
MIN_VAL_PER_CLASS = 10

Score = tuple[float, ...]


def epoch_score(logs: Mapping[str, float], monitor: str | None, epoch: int) -> Score | None:
    """The sortable score of one epoch (higher is better), or None when its logs lack ``monitor``.

    Args:
        logs: the epoch's Keras logs (``val_accuracy``, ``val_loss``...).
        monitor: ``val_accuracy`` (ties broken by ``val_loss``), ``accuracy`` (by ``loss``), ``val_loss`` (the
            lowest wins: multi-label runs), or None: the last epoch wins.
        epoch: the 1-based epoch.
    """
    if monitor is None:
        return (float(epoch),)
    value = logs.get(monitor)
    if value is None or not math.isfinite(float(value)):
        return None
    if monitor.endswith("loss"):
        return (-float(value),)
    loss = logs.get(monitor.replace("accuracy", "loss"))
    loss = float(loss) if loss is not None and math.isfinite(float(loss)) else math.inf
    return (float(value), -loss)


def is_better(score: Score | None, best: Score | None) -> bool:
    return score is not None and (best is None or tuple(score) > tuple(best))


def from_record(value) -> Score | None:
    """A best score as a backup's meta.json holds it; a bare number (backups before the tie-break) ties last."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return (float(value), -math.inf)
    return tuple(float(v) for v in value)


def best_epoch(history: Mapping[str, Sequence[float]]) -> int | None:
    """The 1-based epoch the rule keeps from a run's history columns (``val_accuracy``, ``val_loss``...)."""
    monitor = "val_accuracy" if "val_accuracy" in history else "val_loss" if "val_loss" in history else None
    n = len(next(iter(history.values()), []))
    best, kept = None, None
    for i in range(n):
        logs = {k: v[i] for k, v in history.items() if i < len(v)}
        score = epoch_score(logs, monitor, i + 1)
        if is_better(score, best):
            best, kept = score, i + 1
    return kept


def kept_text(kept: Mapping | None, epochs: int) -> str:
    """``kept epoch 27 of 30 (val loss 0.3012)``: which epoch's model the run published (for its closing line)."""
    if kept is None:
        return f"kept epoch {epochs} of {epochs}"
    loss = f" (val loss {kept['val_loss']:.4f})" if "val_loss" in kept else " (the last: no validation split)"
    return f"kept epoch {kept['epoch']} of {epochs}{loss}"


def small_validation_warning(val_labels, num_classes: int, given_splits: bool) -> str | None:
    """One line when the validation split is too small to choose an epoch reliably; None when it is not.

    ``val_labels``: class indices, or multi-hot rows (multi-label: a class's count is the images that have it).
    """
    n = len(val_labels)
    if n == 0:
        return None
    if len(getattr(val_labels, "shape", ())) == 2:
        fewest = int(min(val_labels.sum(axis=0)))
    else:
        fewest = min(list(val_labels).count(c) for c in range(num_classes))
    if n >= MIN_VAL_IMAGES and fewest >= MIN_VAL_PER_CLASS:
        return None
    fix = (
        "move more images into the val split"
        if given_splits
        else "give it a larger share (--val 0.2) or train on every image and keep the last epoch (--val 0)"
    )
    return (
        f"warning: only {n} validation images ({fewest} in the smallest class): too few to choose the best epoch "
        f"reliably (many epochs tie; ties go to the lower val loss); {fix}"
    )
