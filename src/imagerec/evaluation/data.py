"""The images an evaluation sees: a split of the run's own manifest, or another dataset with the same classes.

Images are decoded by :func:`imagerec.data.images.load_image` with the run's image size, channels and resize
policy (through :func:`imagerec.data.pipeline.decode_all`), so evaluation sees exactly the serve-time tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from imagerec.errors import DataError, ImagerecError, ImageRejected, RunError

EVAL_SPLITS = ("train", "val", "test")


@dataclass
class EvalSet:
    """Decoded images with their true class indices (into the run's labels) and where they came from."""

    paths: list[str]
    images: np.ndarray  # uint8 (N, S, S, C)
    y: np.ndarray  # int64 (N,); a multi-label run's: multi-hot float32 (N, K)
    source: str  # "run:test", "run:val" or the dataset path
    skipped: int = 0


def _check_split(split: str) -> None:
    if split not in EVAL_SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(EVAL_SPLITS)}")


def _spec(clf):
    from imagerec.data.pipeline import PipelineSpec

    return PipelineSpec(clf.image_size, clf.channels, clf.resize)


def run_split(clf, split: str) -> EvalSet:
    """The ``split`` part of the run's own manifest, decoded."""
    from imagerec.data.pipeline import decode_all, label_array
    from imagerec.data.split import read_manifest, rows_for

    _check_split(split)
    run_dir = clf.run_dir
    if not run_dir.manifest.exists():
        raise RunError(f"run {str(run_dir.path)!r} has no manifest.csv; evaluate it on a dataset with --data")
    rows = rows_for(read_manifest(run_dir.manifest), split)
    if not rows:
        raise DataError(
            f"the {split!r} split of run {str(run_dir.path)!r} has no images; "
            f"pick another with --split or evaluate on a dataset with --data"
        )
    unknown = sorted({name for r in rows for name in r.labels} - set(clf.labels))
    if unknown:
        raise RunError(f"manifest of {str(run_dir.path)!r} names classes {unknown} that labels.json lacks")
    missing = [r.path for r in rows if not _exists(r.path)]
    if missing:
        raise DataError(
            f"{len(missing)} image(s) of the {split!r} split are gone (first: {missing[0]!r}); "
            "restore the dataset or evaluate on another one with --data"
        )
    try:
        images = decode_all([r.path for r in rows], _spec(clf))
    except ImageRejected as exc:
        raise DataError(f"an image of the {split!r} split no longer decodes: {exc}") from None
    y = label_array(rows, clf.labels)
    return EvalSet([r.path for r in rows], images, y.astype(np.int64) if y.ndim == 1 else y, f"run:{split}")


def _exists(path: str) -> bool:
    import os

    return os.path.isfile(path)


def dataset_split(clf, data: str, split: str) -> EvalSet:
    """Images of another dataset whose class names are all among the run's (matched by name, any order).

    A dataset with fixed splits (``train/ val/ test/`` folders or a CSV ``split`` column) contributes its
    ``split`` part when it has one, otherwise all of its images. Undecodable files are skipped and counted.
    """
    from imagerec.data.images import load_image
    from imagerec.data.sources import label_set, load_source

    _check_split(split)
    source = load_source(data)
    multilabel = getattr(clf, "task", "multiclass") == "multilabel"
    if source.task == "multilabel" and not multilabel:
        raise DataError(
            f"dataset {str(data)!r} is multi-label (a 'labels' column) but run {str(clf.run_dir.path)!r} answers "
            "one class per image; evaluate a multi-label run on it"
        )
    unknown = [name for name in source.class_names if name not in clf.labels]
    if unknown:
        raise DataError(
            f"dataset {str(data)!r} has class(es) {unknown} that run {str(clf.run_dir.path)!r} does not know "
            f"(its classes: {clf.labels}); rename or remove those folders"
        )
    samples = source.samples
    if any(s.split == split for s in samples):
        samples = [s for s in samples if s.split == split]
    index = {name: i for i, name in enumerate(clf.labels)}
    paths, arrays, y, skipped = [], [], [], len(source.invalid)
    for s in samples:
        try:
            arrays.append(load_image(s.path, (clf.image_size, clf.image_size), clf.channels, clf.resize))
        except ImageRejected:
            skipped += 1
            continue
        paths.append(s.path)
        names = label_set(s.label) if source.task == "multilabel" else [s.label]
        y.append(_hot(names, index) if multilabel else index[s.label])
    if not arrays:
        raise DataError(f"dataset {str(data)!r} has no decodable images to evaluate on")
    return EvalSet(
        paths, np.stack(arrays), np.array(y, dtype=np.float32 if multilabel else np.int64), str(data), skipped
    )


def _hot(names: list[str], index: dict[str, int]) -> np.ndarray:
    """The multi-hot row of ``names`` over a run's classes (a single-label image: one 1)."""
    row = np.zeros(len(index), dtype=np.float32)
    row[[index[name] for name in names]] = 1.0
    return row


def load_eval_set(clf, data: str | None, split: str) -> EvalSet:
    return run_split(clf, split) if data is None else dataset_split(clf, str(data), split)


def require_classifier(clf, verb: str) -> None:
    """Refuse a run path where a loaded Classifier is expected (evaluation never loads a run itself)."""
    import os

    if isinstance(clf, (str, os.PathLike)):
        raise ImagerecError(
            f"{verb} takes a loaded Classifier, got the path {str(clf)!r}; "
            f"load it first: imagerec.Classifier.load({str(clf)!r})"
        )
