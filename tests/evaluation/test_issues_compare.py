"""``imagerec data issues`` finds a planted mislabelled image; ``imagerec compare`` tables two tiny real runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import imagerec
from imagefixtures import COLOURS, make_image
from imagerec.cli import main

PLANTED = "val/blue/actually_red.png"


def cli(*args: str) -> int:
    try:
        main(list(args))
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory, imagerec_home) -> Path:
    """A tutorial-cnn run on split folders whose val split holds one red image filed under 'blue'."""
    root = tmp_path_factory.mktemp("planted")
    rng = np.random.default_rng(5)
    for split, n in (("train", 14), ("val", 4), ("test", 4)):
        for name, colour in COLOURS.items():
            folder = root / "data" / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(make_image(colour, rng)).save(folder / f"{name}_{i}.png")
    Image.fromarray(make_image(COLOURS["red"], rng)).save(root / "data" / PLANTED)
    run = imagerec.train(root / "data", out=root / "run", model="tutorial-cnn", epochs=6, batch_size=16, seed=0,
                         log=lambda *_: None)  # fmt: skip
    assert run.metrics["val"]["accuracy"] >= 0.8, run.metrics
    return run.path


def test_data_issues_ranks_the_planted_image_first(planted_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(planted_run, run)
    assert cli("data", "issues", str(run), "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows and rows[0]["path"].endswith(PLANTED)
    top = rows[0]
    assert top["given"] == "blue" and top["predicted"] == "red" and top["out_of_sample"] is True
    assert top["p_given"] < 0.5 and [r["p_given"] for r in rows] == sorted(r["p_given"] for r in rows)
    assert json.loads((run / "evaluation" / "label_issues.json").read_text())[0]["path"] == top["path"]
    with Image.open(run / "evaluation" / "label_issues.png") as img:
        assert img.format == "PNG" and img.width >= 150
    # the report shows the gallery once there is an evaluation
    imagerec.evaluate(run)
    html = (run / "evaluation" / "report.html").read_text()
    assert "Possible label issues" in html and "actually_red.png" in html
    assert cli("data", "issues", str(run), "--splits", "nope") == 2


def _independent_figures(run: Path, split: str) -> dict:
    """Accuracy and macro F1 of RUN on one split, from ``Classifier.predict`` on the manifest's files and
    scikit-learn (no imagerec metrics code)."""
    from sklearn.metrics import accuracy_score, f1_score

    from imagerec import Classifier
    from imagerec.data.split import read_manifest, rows_for

    clf = Classifier.load(run)
    rows = rows_for(read_manifest(run / "manifest.csv"), split)
    truth = [r.label for r in rows]
    predicted = [p.label for p in clf.predict([r.path for r in rows])]
    return {
        "accuracy": accuracy_score(truth, predicted),
        "macro_f1": f1_score(truth, predicted, average="macro"),
        "num_images": len(rows),
        "params": sum(int(np.prod(w.shape)) for w in clf.model.weights),
    }


@pytest.mark.parametrize(
    "split", ["test", "val"]
)  # val: the planted image makes accuracy and macro F1 differ
def test_compare_two_runs(planted_run, trained_run, tmp_path, capsys, split):
    assert cli("compare", str(trained_run), str(planted_run), "--split", split, "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in rows] == ["imagerec-cnn", "tutorial-cnn"]
    assert [r["run"] for r in rows] == [str(trained_run), str(planted_run)]
    for i, (run, row) in enumerate(zip((trained_run, planted_run), rows, strict=True)):
        # the run's own records: training's metrics.json, and `imagerec evaluate` on a copy (compare writes nothing)
        trained = json.loads((run / "metrics.json").read_text())[split]
        evaluated_run = tmp_path / f"evaluated-{i}"
        shutil.copytree(run, evaluated_run)
        assert cli("evaluate", str(evaluated_run), "--split", split) == 0
        capsys.readouterr()
        evaluated = json.loads((evaluated_run / "evaluation" / "metrics.json").read_text())
        independent = _independent_figures(run, split)
        assert row["accuracy"] == pytest.approx(evaluated["accuracy"], abs=1e-9)
        assert row["accuracy"] == pytest.approx(trained["accuracy"], abs=1e-9)
        assert row["accuracy"] == pytest.approx(independent["accuracy"], abs=1e-9)
        assert row["macro_f1"] == pytest.approx(evaluated["macro"]["f1"], abs=1e-9)
        assert row["macro_f1"] == pytest.approx(independent["macro_f1"], abs=1e-9)
        assert row["ece"] == pytest.approx(evaluated["ece"], abs=1e-9) and row["ece"] >= 0
        assert row["top_k_accuracy"] == pytest.approx(evaluated["top_k_accuracy"], abs=1e-9)
        assert row["top_k_accuracy"] == pytest.approx(trained["top3_accuracy"], abs=1e-9)  # 3 classes: top-3
        assert (
            row["num_images"] == evaluated["num_images"] == trained["num_images"] == independent["num_images"]
        )
        assert row["params"] == independent["params"] > 1000
        assert row["model_bytes"] == (run / "model.keras").stat().st_size
        assert row["image_size"] == json.loads((run / "config.json").read_text())["image_size"]
        assert row["latency_ms_per_image"] > 0  # a timing: only its presence is checked
    if split == "val":  # the red image filed under 'blue' is misclassified, so the figures differ
        assert rows[1]["accuracy"] < 1 and rows[1]["macro_f1"] != rows[1]["accuracy"]
    assert rows[0]["params"] != rows[1]["params"]
    assert not (planted_run / "evaluation").exists()  # compare never writes into a run
    assert cli("compare", str(trained_run), "--json") == 2
