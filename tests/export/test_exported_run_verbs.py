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


def test_predicting_with_a_litert_export_prints_nothing_on_stderr(exported, tmp_path):
    """LiteRT's "INFO: Created TensorFlow Lite XNNPACK delegate" is start-up chatter too (the CLI catches it)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import numpy as np
    from PIL import Image

    run, _ = exported
    image = tmp_path / "blue.png"
    Image.fromarray(make_image(COLOURS["blue"], np.random.default_rng(4))).save(image)
    env = {k: v for k, v in os.environ.items() if k not in ("IMAGEREC_TF_QUIET", "TF_CPP_MIN_LOG_LEVEL")}
    exe = str(Path(sys.executable).with_name("imagerec"))
    args = [exe, "predict", str(run), str(image), "--format", "json", "--runtime", "tflite-dynamic"]
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["runtime"] == "tflite-dynamic"
    assert proc.stderr == "", proc.stderr


def test_export_prints_its_table_and_nothing_on_stderr(trained_run, tmp_path):
    """The int8 converter prints its settings from C++ ("fully_quantize: 0, ..."): chatter, caught by the CLI."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    env = {k: v for k, v in os.environ.items() if k not in ("IMAGEREC_TF_QUIET", "TF_CPP_MIN_LOG_LEVEL")}
    exe = str(Path(sys.executable).with_name("imagerec"))
    args = [exe, "export", str(run), "--format", "tflite", "--quantize", "int8", "--parity-images", "8"]
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "tflite int8" in proc.stdout and proc.stderr == "", proc.stderr
