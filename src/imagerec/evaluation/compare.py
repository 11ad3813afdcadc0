"""Side-by-side comparison of runs: headline metrics on each run's test split, model size and latency.

Every row has the same keys; a figure that does not apply to a run's task is None. Single-label runs report
``accuracy``, ``top_k_accuracy`` and ``ece``; multi-label runs (answers at per-class thresholds) report
``micro_f1``, ``mAP``, ``subset_accuracy`` and ``hamming_loss`` instead; ``macro_f1`` applies to both (per-class F1
averaged over the classes). :data:`TASK_FIGURES` says which is which.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from imagerec.errors import ImagerecError
from imagerec.settings import EvaluateSettings

LATENCY_BATCH = 8
LATENCY_REPEATS = 5
#: the figures only one task reports (None in the other's rows); ``macro_f1`` is both tasks'
TASK_FIGURES = {
    "multiclass": ("accuracy", "top_k_accuracy", "ece"),
    "multilabel": ("micro_f1", "mAP", "subset_accuracy", "hamming_loss"),
}


def measure_latency(clf, batch: int = LATENCY_BATCH, repeats: int = LATENCY_REPEATS) -> float:
    """Median milliseconds per image of ``clf.predict_proba`` on a batch of ``batch`` images (after a warm-up)."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (batch, clf.image_size, clf.image_size, clf.channels), dtype=np.uint8)
    clf.predict_proba(x)  # warm-up: traces the compiled function
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        clf.predict_proba(x)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) / batch * 1000)


def summarise_run(clf, split: str = EvaluateSettings.split) -> dict[str, Any]:
    """One column of the comparison for a loaded Classifier: its run's metrics (reused from
    ``evaluation/metrics.json`` when it was computed on the same split of the run, else computed now without
    writing), params, file size, latency."""
    from imagerec.evaluation.data import require_classifier
    from imagerec.evaluation.evaluator import evaluate_classifier
    from imagerec.utils import read_json

    require_classifier(clf, "compare_runs")
    saved = clf.run_dir.evaluation / "metrics.json"
    metrics = None
    if saved.exists():
        try:
            metrics = read_json(saved)
        except (OSError, ValueError):
            metrics = None
        same = (metrics or {}).get("source") == f"run:{split}" and metrics.get("model_sha256") == clf.version
        if not same or not _answers_as_now(clf, metrics):
            metrics = None
    if metrics is None:
        metrics = evaluate_classifier(clf, split=split, write=False)
    return {
        "run": str(clf.run_dir.path),
        "model": clf.name,
        "task": clf.task,
        **task_figures(clf.task, metrics),
        "num_images": metrics["num_images"],
        "params": int(clf.model.count_params()),
        "model_bytes": os.path.getsize(clf.run_dir.model),
        "latency_ms_per_image": measure_latency(clf),
        "image_size": clf.image_size,
    }


def _answers_as_now(clf, metrics: dict[str, Any]) -> bool:
    """Whether saved metrics were computed with the run's current temperature (multi-label: thresholds)."""
    if clf.task != "multilabel":
        return metrics.get("temperature") == clf.temperature
    saved = [c.get("threshold") for c in (metrics.get("per_class") or {}).values()]
    return len(saved) == len(clf.labels) and np.allclose(saved, clf.thresholds, atol=1e-6)


def task_figures(task: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of one evaluation: ``macro_f1`` and its task's :data:`TASK_FIGURES` (the other
    task's are None)."""
    mine = {k: metrics[k] for k in TASK_FIGURES[task] if k != "micro_f1"}
    if task == "multilabel":
        mine["micro_f1"] = metrics["micro"]["f1"]
    other = TASK_FIGURES["multiclass" if task == "multilabel" else "multilabel"]
    return {"macro_f1": metrics["macro"]["f1"], **mine, **dict.fromkeys(other)}


def compare_runs(classifiers: list, split: str = EvaluateSettings.split) -> list[dict[str, Any]]:
    """Summaries of two or more loaded Classifiers (one per run), in order.

    Example:
        >>> rows = imagerec.classifier.compare(["runs/a", "runs/b"])   # loads the runs, then calls this
        >>> [r["accuracy"] for r in rows]
    """
    if len(classifiers) < 2:
        raise ImagerecError(f"compare needs at least two runs, got {len(classifiers)}")
    return [summarise_run(clf, split) for clf in classifiers]
