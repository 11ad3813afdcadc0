"""Every verb still works on a run that has exports (``auto`` may answer with one): compare, explain, typos."""

from __future__ import annotations

import json

from imagefixtures import COLOURS, make_image


def test_compare_and_explain_use_the_runs_keras_model_once_it_is_exported(exported, cli, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    run, _ = exported
    assert json.loads((run / "exports" / "runtime.json").read_text())["runtime"] != "keras"  # auto: an export
    code = cli(["compare", str(run), str(run), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    rows = json.loads(out)
    assert rows[0]["params"] > 0 and rows[0]["params"] == rows[1]["params"]
    image = tmp_path / "red.png"
    Image.fromarray(make_image(COLOURS["red"], np.random.default_rng(3))).save(image)
    code = cli(["explain", str(run), str(image), "--out", str(tmp_path / "heat.png")])
    _, err = capsys.readouterr()
    assert code == 0, err
    assert (tmp_path / "heat.png").stat().st_size > 0
    code = cli(["explain", str(run), str(tmp_path / "missing.png")])
    _, err = capsys.readouterr()
    assert code == 2 and err.strip().splitlines() == [
        f"imagerec: error: image '{tmp_path / 'missing.png'}': no such file"
    ]


def test_a_typo_in_the_augmentation_preset_is_one_line(colour_data, tmp_path, cli, capsys):
    code = cli(
        ["train", str(colour_data), "--out", str(tmp_path / "run"), "--augment", "defualt", "--epochs", "1"]
    )
    _, err = capsys.readouterr()
    assert code == 2
    assert err.strip().splitlines() == [
        "imagerec: error: unknown augmentation preset 'defualt'; did you mean 'default'?"
    ]
    assert not (tmp_path / "run" / "model.keras").exists()


def test_evaluate_on_an_exported_run_says_which_runtime_and_keeps_grad_cam(exported, cli, capsys):
    import shutil

    run, _ = exported
    copy = run.parent / "evaluated"
    shutil.copytree(run, copy)
    code = cli(["evaluate", str(copy), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    metrics = json.loads(out)
    recorded = json.loads((copy / "exports" / "runtime.json").read_text())["runtime"]
    assert metrics["runtime"] == recorded != "keras"
    if metrics["accuracy"] < 1.0:  # a wrong image exists: its Grad-CAM is drawn with the run's Keras model
        assert (copy / "evaluation" / "gradcam_wrong.png").stat().st_size > 0
