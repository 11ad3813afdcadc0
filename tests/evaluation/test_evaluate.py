"""End to end on the tiny trained run: metrics.json, pictures, report.html, calibration, Grad-CAM, CLI exit codes.

The session fixture ``trained_run`` is shared and read-only: each test works on a copy.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import classification_report, confusion_matrix, top_k_accuracy_score

import imagerec
from imagefixtures import COLOURS, make_image, write_colour_dataset
from imagerec.cli import main
from imagerec.errors import DataError, ImagerecError, RunError

PNGS = ("confusion_matrix.png", "per_class_f1.png", "training_curves.png", "reliability.png")


@pytest.fixture(scope="module")
def evaluated(trained_run, tmp_path_factory) -> tuple[Path, dict]:
    run = tmp_path_factory.mktemp("ev") / "run"
    shutil.copytree(trained_run, run)
    return run, imagerec.evaluate(run)


def cli(*args: str) -> int:
    try:
        main(list(args))
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_metrics_json_equals_sklearn_on_the_classifiers_own_predictions(evaluated):
    run, metrics = evaluated
    saved = json.loads((run / "evaluation" / "metrics.json").read_text())
    assert saved["accuracy"] == metrics["accuracy"] and saved["labels"] == ["blue", "green", "red"]
    for key in ("accuracy", "top_k_accuracy", "macro", "weighted", "per_class", "confusion_matrix", "labels",
                "num_images", "ece", "roc_auc_ovr"):  # fmt: skip
        assert key in saved, key
    # independent path: the facade's predict() on the test files of the manifest
    rows = [r.split(",") for r in (run / "manifest.csv").read_text().splitlines()[1:]]
    test = [(p, label) for p, label, split, _ in rows if split == "test"]
    clf = imagerec.Classifier.load(run)
    preds = clf.predict([p for p, _ in test], threshold=0)
    y = [clf.labels.index(label) for _, label in test]
    pred = [clf.labels.index(p.label) for p in preds]
    rep = classification_report(
        y, pred, labels=[0, 1, 2], target_names=clf.labels, zero_division=0, output_dict=True
    )
    assert saved["num_images"] == len(test)
    assert saved["confusion_matrix"] == confusion_matrix(y, pred, labels=[0, 1, 2]).tolist()
    for name in clf.labels:
        assert saved["per_class"][name]["f1"] == pytest.approx(rep[name]["f1-score"])
    assert saved["macro"]["f1"] == pytest.approx(rep["macro avg"]["f1-score"])
    assert len((run / "evaluation" / "predictions.csv").read_text().splitlines()) == len(test) + 1


def test_pictures_are_valid_pngs_of_sensible_size(evaluated):
    run, _ = evaluated
    for name in PNGS:
        path = run / "evaluation" / name
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            assert img.format == "PNG" and img.width >= 300 and img.height >= 200, (name, img.size)
            assert np.asarray(img.convert("L")).std() > 5, f"{name} looks blank"


def test_report_is_self_contained_and_names_every_class(evaluated):
    run, _ = evaluated
    html = (run / "evaluation" / "report.html").read_text()
    assert not re.search(r"https?://", html)
    assert re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]*)""", html) and all(
        u.startswith("data:image/png;base64,")
        for u in re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]*)""", html)
    )
    assert "<link" not in html and "<script" not in html
    assert html.count("data:image/png;base64,") >= len(PNGS)
    for name in ("blue", "green", "red"):
        assert f"<td>{name}</td>" in html
    assert "imagerec-cnn" in html and "image_size" in html  # the config table


def test_gradcam_heatmap_is_normalised_and_explain_writes_a_png(evaluated, tmp_path):
    from imagerec.evaluation import GradCAM, explain

    run, _ = evaluated
    clf = imagerec.Classifier.load(run)
    img = np.zeros((32, 32, 3), np.uint8)
    img[:] = (220, 30, 30)
    heat = GradCAM(clf.model)(img[None])
    assert heat.shape == (1, 32, 32) and heat.min() >= 0 and heat.max() == pytest.approx(1.0)
    out = explain(clf, img, tmp_path / "heat.png")
    assert out["label"] == "red" and out["layer"].startswith("re_lu")  # the conv block after BatchNorm
    with Image.open(tmp_path / "heat.png") as png:
        assert png.format == "PNG" and png.width >= 200


def test_gradcam_reaches_the_conv_layer_inside_a_backbone():
    from imagerec.evaluation import GradCAM
    from imagerec.models.registry import build_model

    model = build_model("mobilenetv3small", 32, 3, 3)
    cam = GradCAM(model)
    heat = cam(np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8))
    assert cam.layer_name.startswith("backbone/") and heat.shape == (2, 32, 32)
    assert np.isfinite(heat).all() and heat.max() <= 1.0


def test_calibrate_writes_temperature_the_classifier_applies(evaluated, tmp_path):
    from imagerec.evaluation import calibrate

    run = tmp_path / "run"
    shutil.copytree(evaluated[0], run)
    with pytest.raises(ImagerecError, match=r"takes a loaded Classifier.*Classifier\.load"):
        calibrate(run)  # evaluation takes a Classifier; the facade loads runs
    fitted = imagerec.Classifier.load(run)
    rec = fitted.calibrate(target_accuracy=0.9)
    assert fitted.temperature == pytest.approx(rec["temperature"]) and fitted.threshold == rec["threshold"]
    saved = json.loads((run / "calibration.json").read_text())
    for key in ("temperature", "threshold", "ece_before", "ece_after"):
        assert key in saved
    assert saved["nll_after"] <= saved["nll_before"] + 1e-9
    clf = imagerec.Classifier.load(run)
    assert clf.temperature == pytest.approx(rec["temperature"]) and clf.threshold == rec["threshold"]
    assert imagerec.evaluate(run, write=False)["temperature"] == pytest.approx(rec["temperature"])
    assert clf.evaluate(split="val")["source"] == "run:val"  # the facade verb
    assert json.loads((run / "evaluation" / "metrics.json").read_text())["split"] == "val"


def test_data_option_matches_labels_by_name_and_keeps_zero_support_classes(evaluated, tmp_path):
    run, _ = evaluated
    data = write_colour_dataset(tmp_path / "other", per_class=3, seed=7)
    shutil.rmtree(data / "green")  # a class with zero support in the evaluated data
    m = imagerec.evaluate(run, data=str(data), write=False)
    assert m["num_images"] == 6 and m["per_class"]["green"]["support"] == 0 and m["roc_auc_ovr"] is None
    (data / "purple").mkdir()
    shutil.copy(data / "red" / "red_000.png", data / "purple" / "p.png")
    with pytest.raises(DataError, match=r"\['purple'\]"):
        imagerec.evaluate(run, data=str(data), write=False)


def test_cli_evaluate_report_and_exit_codes(evaluated, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(evaluated[0], run)
    assert cli("evaluate", str(run), "--split", "val", "--json") == 0
    assert json.loads(capsys.readouterr().out)["source"] == "run:val"
    assert cli("report", str(run)) == 0
    assert cli("evaluate", str(tmp_path / "missing")) == 2
    assert "does not exist" in capsys.readouterr().err
    old = tmp_path / "old"
    shutil.copytree(run, old)
    cfg = json.loads((old / "config.json").read_text())
    cfg["format_version"] = 99
    (old / "config.json").write_text(json.dumps(cfg))
    assert cli("evaluate", str(old)) == 2
    assert "another imagerec version" in capsys.readouterr().err
    empty = tmp_path / "empty"
    shutil.copytree(run, empty)
    lines = (empty / "manifest.csv").read_text().splitlines()
    (empty / "manifest.csv").write_text("\n".join(line for line in lines if ",test," not in line) + "\n")
    assert cli("evaluate", str(empty)) == 2
    err = capsys.readouterr().err
    assert "'test' split" in err and "no images" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(RunError):
        imagerec.evaluation.write_report(tmp_path / "missing")


def test_cli_explain_and_calibrate(evaluated, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(evaluated[0], run)
    image = next((run / "manifest.csv").read_text().splitlines()[1:].__iter__()).split(",")[0]
    assert cli("explain", str(run), image, "--out", str(tmp_path / "h.png")) == 0
    assert "Grad-CAM of" in capsys.readouterr().out and (tmp_path / "h.png").stat().st_size > 1000
    (tmp_path / "not.png").write_text("hello")
    assert cli("explain", str(run), str(tmp_path / "not.png")) == 2
    assert cli("explain", str(run), image, "--class", "purple") == 2
    assert "not one of the run's classes" in capsys.readouterr().err
    assert cli("calibrate", str(run), "--no-threshold") == 0
    assert "ECE" in capsys.readouterr().out
    assert json.loads((run / "calibration.json").read_text())["threshold"] is None
    assert cli("calibrate", str(run), "--target-accuracy", "1.5") == 2


@pytest.fixture(scope="module")
def mislabelled(evaluated, tmp_path_factory) -> dict:
    """``imagerec evaluate RUN --data WRONG --top-k 2`` (the Rich table, not --json) on a copy of the run, where
    WRONG labels every image with the class the model finds *least* likely: top-1 and top-2 both miss every image,
    top-3 finds them all. Images whose two smallest scores (nearly) tie are left out, so that the order is clear."""
    root = tmp_path_factory.mktemp("mislabelled")
    run = root / "run"
    shutil.copytree(evaluated[0], run)
    clf = imagerec.Classifier.load(run)
    rng = np.random.default_rng(3)
    images = [make_image(colour, rng) for colour in COLOURS.values() for _ in range(6)]
    all_probs = clf.predict_proba(np.stack(images))
    data = root / "data"
    for i, (image, probs) in enumerate(zip(images, all_probs, strict=True)):
        low, second = np.sort(probs)[:2]
        if low < 0.9 * second:
            folder = data / clf.labels[int(probs.argmin())]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i:02d}.png")
    # a colour's least likely class is never its own, so the images land in at least two class folders
    assert len(list(data.iterdir())) >= 2 and len(list(data.rglob("*.png"))) >= 6, all_probs
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli("evaluate", str(run), "--data", str(data), "--top-k", "2")
    return {"run": run, "data": data, "code": code, "out": out.getvalue()}


def test_cli_table_lists_every_class_and_the_averages(mislabelled):
    assert mislabelled["code"] == 0, mislabelled["out"]
    metrics = json.loads((mislabelled["run"] / "evaluation" / "metrics.json").read_text())
    lines = mislabelled["out"].splitlines()
    for name in ("blue", "green", "red", "macro avg", "weighted avg"):
        row = next((line for line in lines if re.search(rf"\b{name}\b", line) and "│" in line), None)
        assert row is not None, (name, mislabelled["out"])
        cells = [c.strip() for c in row.split("│") if c.strip()]
        expected = metrics[name.split()[0]] if " avg" in name else metrics["per_class"][name]
        support = metrics["num_images"] if " avg" in name else expected["support"]
        numbers = [f"{expected[m]:.4f}" for m in ("precision", "recall", "f1")]
        assert cells[1:] == [*numbers, str(support)], row
    assert f"accuracy {metrics['accuracy']:.4f}" in mislabelled["out"]
    assert f"top-2 accuracy {metrics['top_k_accuracy']:.4f}" in mislabelled["out"]


def test_top_k_option_changes_top_k_accuracy_in_metrics_json(mislabelled):
    metrics = json.loads((mislabelled["run"] / "evaluation" / "metrics.json").read_text())
    assert metrics["top_k"] == 2 and metrics["top_k_accuracy"] == 0.0
    csv_text = (mislabelled["run"] / "evaluation" / "predictions.csv").read_text()
    rows = [line.split(",") for line in csv_text.splitlines()[1:]]
    clf = imagerec.Classifier.load(mislabelled["run"])
    probs = clf.predict_proba(np.stack([clf.preprocess(path) for path, *_ in rows]))
    y = [clf.labels.index(true) for _, true, *_ in rows]
    assert metrics["top_k_accuracy"] == pytest.approx(top_k_accuracy_score(y, probs, k=2, labels=[0, 1, 2]))
    # without --top-k: k = 5, clipped to the 3 classes
    default = imagerec.evaluate(mislabelled["run"], data=str(mislabelled["data"]), write=False)
    assert default["top_k"] == 3 and default["top_k_accuracy"] == 1.0
    assert default["accuracy"] == metrics["accuracy"] == 0.0


def test_mistake_pictures_are_valid_pngs_when_the_model_is_wrong(mislabelled):
    for name in ("most_wrong.png", "gradcam_wrong.png"):
        path = mislabelled["run"] / "evaluation" / name
        assert path.exists(), name
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            assert img.format == "PNG" and img.width >= 200 and img.height >= 100, (name, img.size)
            assert np.asarray(img.convert("L")).std() > 5, f"{name} looks blank"
    html = (mislabelled["run"] / "evaluation" / "report.html").read_text()
    assert "Most confidently wrong images" in html and "Grad-CAM over those images" in html


def test_cli_data_with_unknown_class_names_fails_with_one_line_naming_them(evaluated, tmp_path, capsys):
    data = write_colour_dataset(tmp_path / "other", per_class=2, seed=5)
    (data / "red").rename(data / "purple")
    (data / "green").rename(data / "orange")
    assert cli("evaluate", str(evaluated[0]), "--data", str(data)) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("imagerec: error:"), err
    assert "'orange'" in err and "'purple'" in err and "Traceback" not in captured.err
