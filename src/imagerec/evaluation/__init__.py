"""Evaluation: metrics a practitioner trusts (scikit-learn underneath), pictures a person can read, one report.

Every function here takes a loaded :class:`imagerec.Classifier`; the facade loads runs.

Example:
    >>> import imagerec
    >>> m = imagerec.evaluate("runs/fmnist")          # the run's own test split
    >>> m["accuracy"], m["macro"]["f1"], m["per_class"]["Shirt"]["recall"]
    >>> imagerec.evaluate("runs/fmnist", data="more_photos/")   # any dataset with the same class names
    >>> imagerec.Classifier.load("runs/fmnist").calibrate()["temperature"]
"""

from __future__ import annotations

from imagerec.evaluation.calibration import calibrate
from imagerec.evaluation.compare import compare_runs
from imagerec.evaluation.evaluator import evaluate_classifier
from imagerec.evaluation.gradcam import GradCAM, explain
from imagerec.evaluation.issues import find_label_issues
from imagerec.evaluation.metrics import compute_metrics
from imagerec.evaluation.report import write_report

__all__ = [
    "evaluate_classifier",
    "compute_metrics",
    "calibrate",
    "compare_runs",
    "explain",
    "find_label_issues",
    "write_report",
    "GradCAM",
]
