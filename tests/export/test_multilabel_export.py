"""Exports of a multi-label run: parity compares the label sets at the run's thresholds (and the largest probability
difference), export.json records it, a disagreeing float export fails, and the export answers with label sets."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from imagerec import Classifier
from imagerec.data.split import read_manifest, rows_for
from imagerec.export import parity
from imagerec.export.formats import ExportError
from imagerec.utils import read_json

FORMATS = ["onnx", "tflite", "savedmodel"]


@pytest.fixture(scope="module")
def ml_exported(multilabel_run: Path, tmp_path_factory) -> tuple[Path, dict]:
    """A copy of the session's multi-label run, exported to ONNX, LiteRT (float32) and SavedModel."""
    from imagerec.export.exporter import export_records

    run = tmp_path_factory.mktemp("ml_exported") / "run"
    shutil.copytree(multilabel_run, run)
    records = {}
    for fmt in FORMATS:
        _, (record,) = export_records(Classifier.load(run, runtime="keras"), fmt)
        records[fmt] = record
    return run, records


@pytest.mark.parametrize("fmt", FORMATS)
def test_parity_compares_label_sets_at_the_runs_thresholds(ml_exported, fmt):
    run, records = ml_exported
    record = read_json(Path(records[fmt]["path"]) / "export.json")
    p = record["parity"]
    assert p["task"] == "multilabel" and p["passed"] and p["split"] == "test"
    assert p["label_set_agreement"] == 1.0 and p["max_abs_prob_diff"] < 1e-3
    # every test image took part (each has 0-3 labels: none was skipped for not naming one class)
    assert p["num_images"] == len(rows_for(read_manifest(run / "manifest.csv"), "test"))
    assert p["thresholds"] == pytest.approx(
        list(read_json(run / "thresholds.json")["thresholds"].values()), abs=1e-6
    )
    assert "top1_agreement" not in p and parity.agreement(p) == 1.0
    assert (
        record["task"] == "multilabel"
        and record["thresholds"] == read_json(run / "thresholds.json")["thresholds"]
    )


def test_the_savedmodel_labels_output_holds_label_sets(ml_exported):
    import tensorflow as tf

    run, records = ml_exported
    paths = [r.path for r in rows_for(read_manifest(run / "manifest.csv"), "test")]
    clf = Classifier.load(run, runtime="keras")
    pixels = np.stack([clf.preprocess(p) for p in paths]).astype(np.float32)
    loaded = tf.saved_model.load(str(Path(records["savedmodel"]["path"]) / "saved_model"))
    out = loaded.signatures["serving_pixels"](pixels=tf.constant(pixels))
    sets = [s.decode() for s in out["labels"].numpy()]
    assert sets == [";".join(p.labels) for p in clf.predict(paths)]  # most probable first, '' for none


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_export_answers_with_the_runs_label_sets(ml_exported, fmt):
    run, records = ml_exported
    paths = [r.path for r in rows_for(read_manifest(run / "manifest.csv"), "test")]
    keras = Classifier.load(run, runtime="keras").predict(paths)
    exported = Classifier.load(records[fmt]["path"])
    assert exported.task == "multilabel"
    assert [p.labels for p in exported.predict(paths)] == [p.labels for p in keras]


def test_a_float_export_whose_label_sets_disagree_fails(multilabel_run: Path, tmp_path: Path, monkeypatch):
    from imagerec.export.exporter import export_run

    run = tmp_path / "run"
    shutil.copytree(multilabel_run, run)
    real = parity.check
    # the export answers each class's complement: its label sets differ from the Keras model's on every image
    monkeypatch.setattr(parity, "check", lambda data, probs, emb, q: real(data, 1.0 - probs, emb, q))
    with pytest.raises(
        ExportError,
        match=r"onnx export failed its parity check: label-set agreement at the run's thresholds 0.00%",
    ):
        export_run(Classifier.load(run, runtime="keras"), format="onnx")
    assert not (run / "exports" / "onnx").exists()


def test_multilabel_parity_counts_flips_near_a_threshold_as_ties():
    thresholds = np.array([0.5, 0.3])
    reference = np.array([[0.9, 0.1], [0.52, 0.1], [0.2, 0.8]], np.float32)
    candidate = np.array([[0.9, 0.1], [0.49, 0.1], [0.2, 0.8]], np.float32)  # image 1's class 0 flips at 0.5
    result = parity.multilabel_parity(reference, candidate, thresholds, "none", "test")
    assert result["label_set_agreement"] == pytest.approx(2 / 3, abs=1e-6) and result["near_ties"] == 1
    assert result["label_set_agreement_excluding_ties"] == 1.0 and result["passed"]
    far = candidate.copy()
    far[2, 1] = 0.1  # class 1 of image 2 was far above its threshold: a real disagreement
    failed = parity.multilabel_parity(reference, far, thresholds, "none", "test")
    assert not failed["passed"] and failed["max_abs_prob_diff"] == pytest.approx(0.7, abs=1e-6)
    assert parity.accuracy(reference, np.array([[1, 0], [1, 0], [0, 1]]), thresholds) == 1.0
