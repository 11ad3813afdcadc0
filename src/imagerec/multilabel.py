"""Multi-label runs: which task a run trains, the per-class thresholds it answers with, and its answers.

A run is multi-label when its data is a ``path,labels`` CSV (``--task auto``, the default, detects it) or when
``--task multilabel`` is asked for such data. Everything else is the single-label run's, with these differences:
the head is a float32 sigmoid named ``probs`` on the same ``logits`` layer (``models.registry.sigmoid_head``), the
targets multi-hot (``data.pipeline.label_array``), the loss binary cross-entropy (``recipe.compile_model``), the
kept epoch the one of the lowest validation loss (``selection``). After training, one threshold per class is tuned
on the validation split to maximise that class's F1 (:func:`imagerec.evaluation.metrics.f1_thresholds`) and
stored in ``RUN/thresholds.json``; an answer's labels are the classes whose probability reaches their threshold
(:func:`multilabel_answers`, which ``Classifier.answers`` calls for such a run). The temperature does not apply
(sigmoid outputs are not a softmax): a multi-label run answers with its probabilities as they are.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from imagerec.errors import DataError, ImagerecError
from imagerec.prediction import UNKNOWN, Prediction
from imagerec.run.layout import DEFAULT_THRESHOLD

TASKS = ("auto", "multiclass", "multilabel")


def check_task(task: str) -> None:
    """Raise :class:`ImagerecError` for a task that is none of :data:`TASKS`."""
    if task not in TASKS:
        raise ImagerecError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")


def resolve_task(task: str, scan, class_weights: str = "none") -> str:
    """The task a run on ``scan`` trains: the data's own (``auto``), or ``task`` when the data can train it.

    Raises:
        DataError: ``multilabel`` asked for data with one class per image, or ``multiclass`` for a multi-label CSV.
        ImagerecError: ``class_weights="auto"`` for a multi-label run (its classes have their own thresholds).
    """
    check_task(task)
    if task in ("auto", scan.task):
        if scan.task == "multilabel" and class_weights == "auto":
            raise ImagerecError(
                "--class-weights auto weighs one class per image; a multi-label run's classes each get their own "
                "threshold (tuned on the validation split): train it with --class-weights none"
            )
        return scan.task
    if task == "multilabel":
        raise DataError(
            f"--task multilabel needs a CSV with 'path,labels' columns (the classes of each image separated by "
            f"';'), but {scan.root!r} is a {scan.kind} dataset with one class per image; drop --task or write "
            "such a CSV"
        )
    raise DataError(
        f"--task {task}: {scan.root!r} is a multi-label CSV (a 'labels' column); train it with --task multilabel "
        "(or auto), or give one class per image in a 'label' column"
    )


def monitored(task: str) -> str:
    """The figure that chooses the kept epoch (see ``training/selection.py``): loss for multi-label, else accuracy."""
    return "loss" if task == "multilabel" else "accuracy"


def run_task(config: dict[str, Any]) -> str:
    """The task of a run from its config.json (runs from before multi-label are ``multiclass``)."""
    return str(config.get("task") or "multiclass")


def read_thresholds(run_dir, class_names: list[str]) -> np.ndarray:
    """A run's per-class thresholds (in ``class_names`` order) from its thresholds.json; missing: the default
    (:data:`DEFAULT_THRESHOLD`: the threshold of a class the validation split cannot tune)."""
    return np.array(run_dir.read_thresholds(class_names), dtype=np.float32)


def split_metrics(learner, split: str, y: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """A multi-label run's final figures on ``split`` (what ``Learner.evaluate`` returns for it).

    On ``val`` (evaluated first) the thresholds are tuned and written to ``RUN/thresholds.json``; a run without a
    validation split answers with the default threshold. ``accuracy`` is the subset accuracy (scikit-learn's
    ``accuracy_score`` on label sets).
    """
    from imagerec.evaluation.metrics import f1_thresholds, multilabel_metrics
    from imagerec.evaluation.multilabel import thresholds_record

    names = learner.class_names
    if split == "val" or getattr(learner, "thresholds", None) is None:
        tuned = split == "val"
        learner.thresholds = f1_thresholds(y, probs) if tuned else np.full(len(names), DEFAULT_THRESHOLD)
        if learner.run is not None:
            record = thresholds_record(
                names, learner.thresholds, split if tuned else None, len(y) if tuned else 0
            )
            learner.run.write_json(learner.run.thresholds.name, record)
    m = multilabel_metrics(y, probs, names, learner.thresholds)
    out = {
        "accuracy": m["subset_accuracy"],
        "macro_f1": m["macro"]["f1"],
        "micro_f1": m["micro"]["f1"],
        "mAP": m["mAP"],
        "hamming_loss": m["hamming_loss"],
        "num_images": m["num_images"],
    }
    if split == "test" and learner.run is not None:
        learner.log(
            f"multi-label test: macro F1 {out['macro_f1']:.4f}, micro F1 {out['micro_f1']:.4f}, mAP "
            f"{out['mAP']:.4f}, subset accuracy {out['accuracy']:.4f} (thresholds: {learner.run.thresholds})"
        )
    return out


def multilabel_answers(
    probs: np.ndarray,
    labels: list[str],
    thresholds: np.ndarray,
    order: np.ndarray,
    sources: list[str | None],
    ood: np.ndarray | None = None,
    ood_limit: float | None = None,
) -> list[Prediction]:
    """A multi-label run's answers (``Classifier.answers`` for it): one :class:`Prediction` per row of ``probs``.

    ``labels`` holds the classes whose probability is at or above their own threshold, most probable first, and
    ``scores`` every class's probability. ``label`` is the most probable of them (``confidence`` its probability);
    ``unknown`` when no class reaches its threshold (``reason`` ``low_confidence``) or the image is out of
    distribution (``out_of_distribution``: ``labels`` is then empty). ``top_k`` as for one label (``order``: the
    top-k class indices of each row).
    """
    out = []
    for i, row in enumerate(order):
        score = None if ood is None or np.isnan(ood[i]) else float(ood[i])
        far = ood_limit is not None and score is not None and score > ood_limit
        chosen = [] if far else [int(j) for j in np.argsort(-probs[i]) if probs[i, j] >= thresholds[j]]
        reason = "out_of_distribution" if far else None if chosen else "low_confidence"
        out.append(
            Prediction(
                labels[chosen[0]] if chosen else UNKNOWN,
                float(probs[i, row[0]]),
                [(labels[j], float(probs[i, j])) for j in row],
                sources[i],
                i,
                ood_score=score,
                reason=reason,
                labels=[labels[j] for j in chosen],
                scores={name: float(p) for name, p in zip(labels, probs[i], strict=True)},
            )
        )
    return out
