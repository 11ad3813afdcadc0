"""Multi-label runs in ``imagerec data issues`` (a planted missing and a planted extra label are found, out of
sample), ``imagerec compare`` (macro/micro F1 and mAP, and which figures apply to which run) and calibrate's
threshold re-tuning."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import imagerec
from imagefixtures import COLOURS, make_multilabel_image, run_cli
from imagerec import Classifier
from imagerec.data.split import read_manifest, rows_for
from imagerec.utils import read_json

#: (file, colours shown, labels given): a label missing from the set, and one extra in it; both in val
PLANTED = {
    "missing_blue": (["red", "blue"], ["red"]),
    "extra_blue": (["green"], ["blue", "green"]),
}


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory, imagerec_home) -> Path:
    """A multi-label run on a ``path,labels,split`` CSV whose val split holds the two :data:`PLANTED` images."""
    root = tmp_path_factory.mktemp("planted_multilabel")
    (root / "images").mkdir()
    rng = np.random.default_rng(11)
    lines = ["path,labels,split"]

    def add(name: str, shown: list[str], given: list[str], split: str) -> None:
        Image.fromarray(make_multilabel_image(shown, rng)).save(root / "images" / f"{name}.png")
        lines.append(f"images/{name}.png,{';'.join(given)},{split}")

    for i in range(110):
        present = [name for name in COLOURS if rng.random() < 0.5]
        add(f"{i:03d}", present, present, "train" if i < 80 else "val" if i < 98 else "test")
    for name, (shown, given) in PLANTED.items():
        add(name, shown, given, "val")
    (root / "labels.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    run = imagerec.train(root / "labels.csv", out=root / "run", epochs=12, batch_size=8, seed=0,
                         mixed_precision="off", log=lambda *_: None)  # fmt: skip
    assert run.metrics["test"]["macro_f1"] >= 0.8, run.metrics
    return run.path


def test_data_issues_finds_the_planted_missing_and_extra_labels(planted_run: Path, tmp_path: Path, capsys):
    run = tmp_path / "run"
    shutil.copytree(planted_run, run)
    code, out, err = run_cli(capsys, "data", "issues", str(run), "--json")
    assert code == 0, err
    rows = json.loads(out)
    top = {(Path(r["path"]).stem, r["label"], r["kind"]) for r in rows[:2]}
    assert top == {("missing_blue", "blue", "missing"), ("extra_blue", "blue", "extra")}, rows[:4]
    for r in rows[:2]:
        assert r["split"] == "val" and r["out_of_sample"] is True and r["p_given"] < 0.5
        shown, given = PLANTED[Path(r["path"]).stem]
        assert r["given"] == ";".join(sorted(given))
        # the model sees what the image shows: blue present (missing) or absent (extra) by its probability
        assert (r["p_label"] > 0.5) == (r["kind"] == "missing") == ("blue" in shown)
        assert r["p_label"] == pytest.approx(r["p_predicted"] if r["kind"] == "missing" else r["p_given"])
    assert [r["p_given"] for r in rows] == sorted(r["p_given"] for r in rows)
    assert {r["split"] for r in rows} <= {"train", "val"}
    assert all(r["out_of_sample"] == (r["split"] == "val") for r in rows)  # train images: in-sample, said so
    assert read_json(run / "evaluation" / "label_issues.json") == rows
    assert (run / "evaluation" / "label_issues.png").is_file()
    code, out, _ = run_cli(
        capsys, "data", "issues", str(run), "--splits", "val"
    )  # the table names kind and class
    assert code == 0 and "2 possible label issue(s)" in out and "missing" in out and "extra" in out, out


def _independent_figures(run: Path, split: str) -> dict:
    """Macro/micro F1 and mAP of a multi-label RUN from ``Classifier.predict`` and scikit-learn alone."""
    from sklearn.metrics import average_precision_score, f1_score

    clf = Classifier.load(run)
    rows = rows_for(read_manifest(run / "manifest.csv"), split)
    preds = clf.predict([r.path for r in rows])
    truth = np.array([[name in r.labels for name in clf.labels] for r in rows], np.int64)
    answered = np.array([[name in p.labels for name in clf.labels] for p in preds], np.int64)
    scores = np.array([[p.scores[name] for name in clf.labels] for p in preds])
    aps = [
        average_precision_score(truth[:, k], scores[:, k])
        for k in range(len(clf.labels))
        if truth[:, k].any()
    ]
    return {
        "macro_f1": f1_score(truth, answered, average="macro", zero_division=0),
        "micro_f1": f1_score(truth, answered, average="micro", zero_division=0),
        "mAP": float(np.mean(aps)),
        "num_images": len(rows),
    }


def test_compare_reports_multilabel_figures_beside_single_label_ones(multilabel_run, trained_run, capsys):
    code, out, err = run_cli(capsys, "compare", str(multilabel_run), str(trained_run), "--json")
    assert code == 0, err
    multi, single = json.loads(out)
    assert multi["task"] == "multilabel" and single["task"] == "multiclass"
    want = _independent_figures(multilabel_run, "test")
    for key in ("macro_f1", "micro_f1", "mAP"):
        assert multi[key] == pytest.approx(want[key], abs=1e-6), key
    assert multi["num_images"] == want["num_images"]
    assert 0 <= multi["subset_accuracy"] <= 1 and 0 <= multi["hamming_loss"] <= 1
    # the figures of the other task are None, never a number that means something else
    assert multi["accuracy"] is None and multi["ece"] is None and multi["top_k_accuracy"] is None
    assert single["micro_f1"] is None and single["mAP"] is None and single["accuracy"] >= 0.8
    code, out, _ = run_cli(capsys, "compare", str(multilabel_run), str(trained_run))
    assert code == 0 and "n/a" in out and "multi-label" in out and "mAP" in out and "task" in out


def test_calibrate_retunes_the_per_class_thresholds(multilabel_run: Path, tmp_path: Path):
    from imagerec.evaluation.metrics import f1_thresholds
    from imagerec.evaluation.multilabel import tune_thresholds
    from imagerec.runtime import predict_in_batches

    run = tmp_path / "run"
    shutil.copytree(multilabel_run, run)
    clf = Classifier.load(run)
    before = dict(read_json(run / "thresholds.json")["thresholds"])
    record = tune_thresholds(clf, split="test")
    saved = read_json(run / "thresholds.json")
    assert saved["split"] == "test" and saved["num_images"] == record["num_images"] > 0
    assert set(saved) == {"thresholds", "split", "num_images", "rule"}  # the record training writes
    assert record["previous"] == before and record["macro_f1_after"] >= record["macro_f1_before"]
    from imagerec.evaluation.data import run_split

    test = run_split(clf, "test")
    want = f1_thresholds(test.y, predict_in_batches(clf.raw_proba, test.images, 64))
    assert list(saved["thresholds"].values()) == pytest.approx(want, abs=1e-6)
    assert np.allclose(
        clf.thresholds, Classifier.load(run).thresholds
    )  # answers with them at once, as a reload
    assert not list(run.glob(".*tmp*")) and not (run / "calibration.json").exists()


def test_imagerec_calibrate_on_a_multilabel_run_retunes_its_thresholds(
    multilabel_run: Path, tmp_path, capsys
):
    run = tmp_path / "run"
    shutil.copytree(multilabel_run, run)
    code, out, err = run_cli(capsys, "calibrate", str(run), "--split", "test")
    assert code == 0, err
    assert "per-class thresholds re-tuned on" in out and f"wrote {run / 'thresholds.json'}" in out
    assert read_json(run / "thresholds.json")["split"] == "test"
    # calibration.json holds what a multi-label run has besides its thresholds: the OOD threshold (no temperature)
    calibration = read_json(run / "calibration.json")
    assert calibration["task"] == "multilabel" and calibration["temperature"] == 1.0
    assert calibration["ood_keep"] == 0.95 and calibration["ood_threshold"] > 0
    assert "out-of-distribution score" in out
