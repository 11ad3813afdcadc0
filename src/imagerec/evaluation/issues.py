"""Label issues: the images whose given label the model most strongly disagrees with.

Ranked by the model's probability of the *given* label (lowest first), among the images where the model's answer
is another class. This is the "self-confidence" ranking of confident learning (Northcutt et al., 2021).

Choice for a CPU tool: the probabilities come from the run's own model, with no K-fold retraining. For ``val``
(and ``test``) images they are out-of-sample: the model never trained on them. For ``train`` images they are
in-sample, so the model has partly memorised the given label; an image still flagged there is one the model
*strongly* disagrees with despite having been taught otherwise, which makes it a likelier label error, but
training images that the model memorised wrongly are missed. Each row says ``out_of_sample`` so users can tell.

A multi-label run's rows are one per image *and class* whose given state the model contradicts
(:func:`rank_set_issues`): ``missing`` (the class is not in the image's given set, but the model puts p(absent)
below ``max_p_given``) or ``extra`` (given, but p(present) is below ``max_p_given``); ranked the same way, by the
model's probability of what was given (a lower ``--max-p`` keeps only what the model is very sure of). The rule
reads the probabilities, not the run's per-class thresholds: those were tuned on the validation split's labels,
errors included (one wrong label among few positives can pull a class's threshold down to accept it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from imagerec.errors import DataError
from imagerec.settings import IssuesSettings

if TYPE_CHECKING:
    from imagerec.classifier import Classifier
    from imagerec.evaluation.data import EvalSet
    from imagerec.prediction import Prediction

ISSUES_BATCH = 256


def rank_issues(
    data: EvalSet,
    probs: np.ndarray,
    answers: list[Prediction],
    labels: list[str],
    split: str,
    max_p_given: float = IssuesSettings.max_p_given,
) -> list[dict[str, Any]]:
    """Rows for the images whose answer differs from their given class and whose ``p(given) < max_p_given``.

    ``answers`` are the classifier's answers to ``probs`` (``Classifier.answers`` with the threshold off).
    """
    p_given = probs[np.arange(len(data.y)), data.y]
    out = []
    for i, answer in enumerate(answers):
        given = labels[int(data.y[i])]
        if answer.label == given or not p_given[i] < max_p_given:
            continue
        out.append(
            {
                "path": data.paths[i],
                "split": split,
                "given": given,
                "predicted": answer.label,
                "p_given": float(p_given[i]),
                "p_predicted": answer.confidence,
                "out_of_sample": split != "train",
            }
        )
    return out


def rank_set_issues(
    data: EvalSet,
    probs: np.ndarray,
    labels: list[str],
    thresholds: np.ndarray,
    split: str,
    max_p_given: float = IssuesSettings.max_p_given,
) -> list[dict[str, Any]]:
    """A multi-label run's rows: each (image, class) whose given state (in the image's label set or not) the model
    finds less likely than ``max_p_given`` (and than the other state: at most 0.5).

    Each row names the ``label`` and the ``kind`` (``missing``: not given, the model says present; ``extra``:
    given, the model says absent), the ``given`` set and the model's answer ``predicted`` (at the run's
    ``thresholds``; both ``;``-joined), ``p_given`` (the model's probability of the given state), ``p_predicted``
    (of the other state) and ``p_label`` (the class's probability).
    """
    given = np.asarray(data.y) > 0.5
    answered = probs >= np.asarray(thresholds)[None, :]
    p_given = np.where(given, probs, 1.0 - probs)
    out = []
    for i, k in zip(*np.nonzero(p_given < min(max_p_given, 0.5)), strict=True):
        out.append(
            {
                "path": data.paths[i],
                "split": split,
                "label": labels[k],
                "kind": "extra" if given[i, k] else "missing",
                "given": ";".join(labels[j] for j in np.flatnonzero(given[i])),
                "predicted": ";".join(labels[j] for j in np.argsort(-probs[i]) if answered[i, j]),
                "p_given": float(p_given[i, k]),
                "p_predicted": float(1.0 - p_given[i, k]),
                "p_label": float(probs[i, k]),
                "out_of_sample": split != "train",
            }
        )
    return out


def find_label_issues(
    clf: Classifier,
    splits: tuple[str, ...] | list[str] = IssuesSettings.splits,
    limit: int | None = IssuesSettings.limit,
    max_p_given: float = IssuesSettings.max_p_given,
) -> list[dict[str, Any]]:
    """The likeliest mislabelled images of ``splits`` of the classifier's run, most suspicious first.

    Args:
        clf: a loaded :class:`imagerec.Classifier`.
        splits: which parts of the run's manifest to check (``train``, ``val``, ``test``).
        limit: keep at most this many rows (None or 0: all).
        max_p_given: only flag images whose given label has a probability below this.

    Returns:
        Rows with ``path``, ``split``, ``given``, ``predicted``, ``p_given``, ``p_predicted``, ``out_of_sample``
        (a multi-label run's also ``label``, ``kind`` and ``p_label``: see :func:`rank_set_issues`).

    Example:
        >>> rows = imagerec.Classifier.load("runs/fmnist").label_issues(limit=20)
    """
    from imagerec.evaluation.data import require_classifier, run_split
    from imagerec.runtime import predict_in_batches

    require_classifier(clf, "find_label_issues")
    IssuesSettings(splits=tuple(splits), limit=limit, max_p_given=max_p_given).validate()
    if not splits:
        raise DataError("name at least one split to check (train, val or test)")
    rows: list[dict[str, Any]] = []
    checked = 0
    for split in splits:
        try:
            data = run_split(clf, split)
        except DataError:
            if len(splits) == 1:
                raise
            continue  # an empty part of a multi-split request is not an error
        checked += len(data.y)
        probs = predict_in_batches(clf.predict_proba, data.images, ISSUES_BATCH)
        if clf.task == "multilabel":  # a missing or an extra label, class by class
            rows += rank_set_issues(data, probs, clf.labels, clf.thresholds, split, max_p_given)
            continue
        answers = clf.answers(probs, top_k=1, threshold=0)
        rows += rank_issues(data, probs, answers, clf.labels, split, max_p_given)
    if not checked:
        raise DataError(f"splits {list(splits)} of run {str(clf.run_dir.path)!r} hold no images")
    rows.sort(key=lambda r: (r["p_given"], r["path"]))
    return rows[:limit] if limit else rows


def write_issues(run_dir, rows: list[dict[str, Any]]) -> None:
    """Save ``rows`` as ``evaluation/label_issues.json`` (the report's gallery reads it)."""
    from imagerec.utils import atomic_write_json

    atomic_write_json(run_dir.evaluation / "label_issues.json", rows)
