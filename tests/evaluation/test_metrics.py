"""Every number of metrics.json against scikit-learn on the same predictions (no model needed: fast)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import classification_report, confusion_matrix, roc_auc_score, top_k_accuracy_score

from imagerec.classifier import softmax_temperature
from imagerec.evaluation.calibration import fit_temperature, nll, suggest_threshold
from imagerec.evaluation.metrics import compute_metrics, expected_calibration_error, reliability_bins

LABELS = ["cat", "dog", "fox", "owl"]


def _probs(rng, n, k, never=None):
    logits = rng.normal(0, 2, (n, k))
    if never is not None:
        logits[:, never] -= 50  # this class is never predicted
    e = np.exp(logits - logits.max(1, keepdims=True))
    return (e / e.sum(1, keepdims=True)).astype(np.float32)


def _assert_equal_to_sklearn(m, y, probs, labels, k):
    idx = list(range(len(labels)))
    pred = probs.argmax(1)
    rep = classification_report(y, pred, labels=idx, target_names=labels, zero_division=0, output_dict=True)
    assert m["accuracy"] == pytest.approx(float((pred == y).mean()))
    for name in labels:
        for ours, theirs in (
            ("precision", "precision"),
            ("recall", "recall"),
            ("f1", "f1-score"),
            ("support", "support"),
        ):
            assert m["per_class"][name][ours] == pytest.approx(rep[name][theirs]), (name, ours)
    for avg in ("macro", "weighted"):
        for ours, theirs in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score")):
            assert m[avg][ours] == pytest.approx(rep[f"{avg} avg"][theirs]), (avg, ours)
    assert m["confusion_matrix"] == confusion_matrix(y, pred, labels=idx).tolist()
    score = probs[:, 1] if len(labels) == 2 else probs
    if k < len(labels):
        assert m["top_k_accuracy"] == pytest.approx(top_k_accuracy_score(y, score, k=k, labels=idx))
    assert m["labels"] == labels and m["num_images"] == len(y)


def test_metrics_equal_sklearn_with_never_predicted_and_zero_support_class():
    rng = np.random.default_rng(0)
    y = rng.choice([0, 1, 3], size=200)  # "fox" (2) has zero support
    probs = _probs(rng, 200, 4, never=3)  # "owl" (3) is never predicted
    m = compute_metrics(y, probs, LABELS, top_k=2)
    assert m["per_class"]["fox"]["support"] == 0 and m["per_class"]["fox"]["recall"] == 0.0
    assert m["per_class"]["owl"]["precision"] == 0.0 and m["per_class"]["owl"]["support"] > 0
    _assert_equal_to_sklearn(m, y, probs, LABELS, 2)
    assert m["roc_auc_ovr"] is None  # undefined with a class absent from the evaluated images


def test_roc_auc_and_top_k_equal_sklearn_when_every_class_is_present():
    rng = np.random.default_rng(1)
    y = np.arange(300) % 4
    probs = _probs(rng, 300, 4)
    probs[np.arange(300), y] += 0.15  # some skill
    probs /= probs.sum(1, keepdims=True)
    m = compute_metrics(y, probs, LABELS, top_k=2)
    _assert_equal_to_sklearn(m, y, probs, LABELS, 2)
    p64 = probs.astype(np.float64) / probs.astype(np.float64).sum(1, keepdims=True)
    assert m["roc_auc_ovr"] == pytest.approx(roc_auc_score(y, p64, multi_class="ovr", labels=range(4)))
    assert m["top_k"] == 2 and 0 < m["accuracy"] < m["top_k_accuracy"] < 1


def test_binary_case_and_k_clipped_to_class_count():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 80)
    probs = _probs(rng, 80, 2)
    m = compute_metrics(y, probs, ["no", "yes"], top_k=5)
    _assert_equal_to_sklearn(m, y, probs, ["no", "yes"], 2)
    assert m["top_k"] == 2 and m["top_k_accuracy"] == 1.0
    assert m["roc_auc_ovr"] == pytest.approx(roc_auc_score(y, probs[:, 1]))


def test_ece_matches_the_textbook_formula_and_is_zero_when_calibrated():
    rng = np.random.default_rng(3)
    probs = _probs(rng, 500, 4)
    y = rng.integers(0, 4, 500)
    conf, correct = probs.max(1), probs.argmax(1) == y
    edges = np.linspace(0, 1, 16)
    expected = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        mask = (conf > lo) & (conf <= hi)
        if mask.any():
            expected += mask.mean() * abs(correct[mask].mean() - conf[mask].mean())
    assert expected_calibration_error(y, probs) == pytest.approx(expected, abs=1e-6)
    assert sum(b["count"] for b in reliability_bins(y, probs)) == 500
    # every answer 80% confident and right 4 times out of 5: perfectly calibrated
    calibrated = np.tile([[0.8, 0.2]], (10, 1)).astype(np.float32)
    assert expected_calibration_error(np.array([0] * 8 + [1] * 2), calibrated) == pytest.approx(0.0, abs=1e-6)


def test_temperature_recovers_a_known_overconfidence():
    rng = np.random.default_rng(4)
    logits = rng.normal(0, 1.5, (4000, 5))
    true_p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array([rng.choice(5, p=p) for p in true_p])
    over = np.exp(3 * logits) / np.exp(3 * logits).sum(1, keepdims=True)  # logits scaled by 3: over-confident
    t = fit_temperature(over, y)
    assert t == pytest.approx(3.0, rel=0.1)
    fixed = softmax_temperature(over, t)
    assert nll(fixed, y) < nll(over, y)
    assert expected_calibration_error(y, fixed) < expected_calibration_error(y, over) / 2


def test_threshold_is_lowest_confidence_meeting_the_target():
    probs = np.array([[0.95, 0.05], [0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
    y = np.array([0, 0, 0, 1, 0])  # the 0.7 answer is wrong
    assert suggest_threshold(probs, y, 1.0) == (0.8, 0.6)
    assert suggest_threshold(probs, y, 0.8) == (0.0, 1.0)  # 4/5 right overall: nothing to reject
    assert suggest_threshold(probs, np.array([1, 1, 1, 1, 1]), 0.5) == (None, 0.0)


def test_hostile_class_names_are_drawn_and_escaped(tmp_path):
    from PIL import Image

    from imagerec.evaluation import plots
    from imagerec.evaluation.report import render_html
    from imagerec.run import RunDir

    labels = ["$\\frac{a$", "<script>x</script>", "ok"]
    y = np.array([0, 1, 2, 2])
    probs = np.eye(3, dtype=np.float32)[[0, 2, 2, 1]]
    m = compute_metrics(y, probs, labels)
    path = plots.confusion_matrix_png(m["confusion_matrix"], labels, tmp_path / "evaluation" / "cm.png")
    plots.f1_bars_png(m["per_class"], tmp_path / "evaluation" / "f1.png")
    with Image.open(path) as img:
        assert img.format == "PNG"
    m["source"] = "<img src=x onerror=alert(1)>"
    html = render_html(m, {"model": {"name": "m"}}, RunDir(tmp_path), None)
    assert "<script>" not in html and "<img src=x" not in html and "&lt;script&gt;x&lt;/script&gt;" in html
