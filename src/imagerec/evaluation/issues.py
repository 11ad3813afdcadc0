"""Label issues: the images whose given label the model most strongly disagrees with.

Ranked by the model's probability of the *given* label (lowest first), among the images where the model's answer
is another class. This is the "self-confidence" ranking of confident learning (Northcutt et al., 2021).

Choice for a CPU tool: the probabilities come from the run's own model, with no K-fold retraining. For ``val``
(and ``test``) images they are out-of-sample: the model never trained on them. For ``train`` images they are
in-sample, so the model has partly memorised the given label; an image still flagged there is one the model
*strongly* disagrees with despite having been taught otherwise, which makes it a likelier label error, but
training images that the model memorised wrongly are missed. Each row says ``out_of_sample`` so users can tell.
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
        Rows with ``path``, ``split``, ``given``, ``predicted``, ``p_given``, ``p_predicted``, ``out_of_sample``.

    Example:
        >>> rows = imagerec.Classifier.load("runs/fmnist").label_issues(limit=20)
    """
    from imagerec.evaluation.data import require_classifier, run_split
    from imagerec.evaluation.multilabel import refuse_multilabel
    from imagerec.runtime import predict_in_batches

    require_classifier(clf, "find_label_issues")
    refuse_multilabel(clf, "imagerec data issues")
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
