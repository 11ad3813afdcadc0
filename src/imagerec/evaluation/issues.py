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

from typing import Any

import numpy as np

from imagerec.errors import DataError

DEFAULT_SPLITS = ("train", "val")


def rank_issues(
    paths: list[str],
    y: np.ndarray,
    probs: np.ndarray,
    labels: list[str],
    split: str,
    max_p_given: float = 0.5,
) -> list[dict[str, Any]]:
    """Rows for the images whose predicted class differs from ``y`` and whose ``p(given) < max_p_given``."""
    pred = probs.argmax(axis=1)
    p_given = probs[np.arange(len(y)), y]
    out = []
    for i in np.nonzero((pred != y) & (p_given < max_p_given))[0]:
        out.append(
            {
                "path": paths[i],
                "split": split,
                "given": labels[int(y[i])],
                "predicted": labels[int(pred[i])],
                "p_given": float(p_given[i]),
                "p_predicted": float(probs[i, pred[i]]),
                "out_of_sample": split != "train",
            }
        )
    return out


def find_label_issues(
    run,
    splits: tuple[str, ...] | list[str] = DEFAULT_SPLITS,
    limit: int | None = 50,
    max_p_given: float = 0.5,
) -> list[dict[str, Any]]:
    """The likeliest mislabelled images of ``splits`` of ``run``, most suspicious first.

    Args:
        run: a run directory or a loaded :class:`imagerec.Classifier`.
        splits: which parts of the run's manifest to check (``train``, ``val``, ``test``).
        limit: keep at most this many rows (None: all).
        max_p_given: only flag images whose given label has a probability below this.

    Returns:
        Rows with ``path``, ``split``, ``given``, ``predicted``, ``p_given``, ``p_predicted``, ``out_of_sample``.

    Example:
        >>> rows = imagerec.evaluation.find_label_issues("runs/fmnist", limit=20)
    """
    from imagerec.classifier import Classifier
    from imagerec.evaluation.data import run_split

    clf = run if isinstance(run, Classifier) else Classifier.load(run)
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
        probs = np.concatenate(
            [clf.predict_proba(data.images[i : i + 256]) for i in range(0, len(data.y), 256)]
        )
        rows += rank_issues(data.paths, data.y, probs, clf.labels, split, max_p_given)
    if not checked:
        raise DataError(f"splits {list(splits)} of run {str(clf.run_dir.path)!r} hold no images")
    rows.sort(key=lambda r: (r["p_given"], r["path"]))
    return rows[:limit] if limit else rows


def write_issues(run_dir, rows: list[dict[str, Any]]) -> None:
    """Save ``rows`` as ``evaluation/label_issues.json`` (the report's gallery reads it)."""
    from imagerec.utils import atomic_write_json

    atomic_write_json(run_dir.evaluation / "label_issues.json", rows)
