"""A multi-label run's answers: the classes at or above their own thresholds, every class's probability."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from imagefixtures import run_cli
from imagerec import Classifier
from imagerec.multilabel import multilabel_answers, read_thresholds
from imagerec.prediction import UNKNOWN

LABELS = ["a", "b", "c"]


def _answers(probs, thresholds=(0.5, 0.3, 0.9), ood=None, ood_limit=None):
    probs = np.asarray(probs, dtype=np.float32)
    order = np.argsort(-probs, axis=1)[:, :2]
    return multilabel_answers(probs, LABELS, np.array(thresholds), order, [None] * len(probs), ood, ood_limit)


def test_labels_are_the_classes_at_or_above_their_thresholds_most_probable_first():
    (p,) = _answers([[0.6, 0.3, 0.85]])
    assert p.labels == ["a", "b"]  # c is below its own 0.9, b exactly at its 0.3
    assert p.label == "a" and p.confidence == np.float32(0.85)  # confidence: the top probability
    assert p.top_k == [("c", np.float32(0.85)), ("a", np.float32(0.6))]
    assert p.scores == {"a": np.float32(0.6), "b": np.float32(0.3), "c": np.float32(0.85)}
    d = p.to_dict()
    assert d["labels"] == ["a", "b"] and set(d["scores"]) == set(LABELS)


def test_no_class_reaching_its_threshold_is_unknown_with_no_labels():
    (p,) = _answers([[0.1, 0.2, 0.5]])
    assert p.label == UNKNOWN and p.labels == [] and p.reason == "low_confidence"
    assert p.to_dict()["labels"] == []


def test_out_of_distribution_empties_the_labels():
    (near, far) = _answers([[0.9, 0.9, 0.95], [0.9, 0.9, 0.95]], ood=np.array([0.1, 2.0]), ood_limit=1.0)
    assert near.labels == ["c", "a", "b"] and near.ood_score == np.float32(0.1)
    assert far.label == UNKNOWN and far.labels == [] and far.reason == "out_of_distribution"


def test_single_label_predictions_carry_no_labels_field(trained_run: Path):
    pred = Classifier.load(trained_run).answers(np.array([[0.2, 0.5, 0.3]]))[0]
    assert pred.labels is None and "labels" not in pred.to_dict() and "scores" not in pred.to_dict()


def test_classifier_answers_with_the_runs_thresholds(multilabel_run: Path):
    clf = Classifier.load(multilabel_run)
    assert clf.task == "multilabel" and clf.temperature == 1.0
    assert np.allclose(clf.thresholds, read_thresholds(clf.run_dir, clf.labels))
    probs = np.array([[0.99, 0.01, 0.99]], dtype=np.float32)
    assert clf.answers(probs)[0].labels == ["blue", "red"]


def test_predict_json_on_a_multilabel_run(multilabel_run: Path, capsys):
    from imagerec.data.split import read_manifest, rows_for

    rows = rows_for(read_manifest(multilabel_run / "manifest.csv"), "test")
    code, out, err = run_cli(
        capsys, "predict", str(multilabel_run), *[r.path for r in rows], "--format", "json"
    )
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == len(rows)
    for line in lines:
        assert set(line["scores"]) == {"blue", "green", "red"}
        assert line["label"] == (line["labels"][0] if line["labels"] else "unknown")
    right = sum(sorted(line["labels"]) == r.labels for line, r in zip(lines, rows, strict=True))
    assert right >= 0.75 * len(rows)


def test_predict_csv_on_a_multilabel_run_has_a_labels_column(multilabel_run: Path, capsys):
    import csv
    import io

    from imagerec.data.split import read_manifest, rows_for

    paths = [r.path for r in rows_for(read_manifest(multilabel_run / "manifest.csv"), "test")]
    code, out, err = run_cli(capsys, "predict", str(multilabel_run), *paths, "--format", "csv")
    assert code == 0, err
    records = list(csv.DictReader(io.StringIO(out)))
    assert list(records[0]) == ["path", "label", "labels", "confidence", "top_k", "ood_score", "error"]
    expected = Classifier.load(multilabel_run).predict(paths)
    assert [r["labels"] for r in records] == [";".join(p.labels) for p in expected]  # '' = no class
    assert [r["label"] for r in records] == [p.label for p in expected]
