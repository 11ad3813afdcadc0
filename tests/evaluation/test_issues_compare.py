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


def test_compare_two_runs(planted_run, trained_run, capsys):
    assert cli("compare", str(trained_run), str(planted_run), "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in rows] == ["imagerec-cnn", "tutorial-cnn"]
    for row in rows:
        assert 0 <= row["accuracy"] <= 1 and 0 <= row["macro_f1"] <= 1 and row["ece"] >= 0
        assert row["params"] > 1000 and row["model_bytes"] > 10_000 and row["latency_ms_per_image"] > 0
    assert rows[0]["params"] != rows[1]["params"]
    assert not (planted_run / "evaluation").exists()  # compare never writes into a run
    assert cli("compare", str(trained_run), "--json") == 2
