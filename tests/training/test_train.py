"""``imagerec train`` / ``imagerec.train``: run directory, overwrite rules, resume rules, bad inputs, determinism."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

import imagerec
from imagefixtures import COLOURS, make_image, write_colour_dataset
from imagerec.cli import main
from imagerec.errors import DataError, ImagerecError, RunError
from imagerec.run import RunDir

QUIET = {"log": lambda *_: None}
TINY = {"model": "tutorial-cnn", "batch_size": 8, "seed": 0}


def cli(args, capsys) -> tuple[int, str, str]:
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def weights_digest(run_path) -> str:
    model = RunDir(run_path).load_model()
    digest = hashlib.sha256()
    for w in model.get_weights():
        digest.update(np.ascontiguousarray(w).tobytes())
    return digest.hexdigest()


def test_run_directory_contents(trained_run):
    run = RunDir(trained_run).require("manifest.csv", "history.csv", "metrics.json")
    config = run.read_config()
    for key in (
        "config",
        "class_names",
        "image_size",
        "channels",
        "resize",
        "seed",
        "versions",
        "data_fingerprint",
    ):
        assert key in config, key
    assert config["class_names"] == ["blue", "green", "red"]
    assert config["image_size"] == 32 and config["channels"] == 3
    assert {"tensorflow", "keras", "numpy", "imagerec"} <= set(config["versions"])
    epochs = config["config"]["train"]["epochs"]
    assert epochs >= 1 and config["config"]["augment"]["preset"] != "auto"
    metrics = json.loads(run.metrics.read_text())
    assert metrics["epochs_completed"] == epochs and 0.0 <= metrics["val"]["accuracy"] <= 1.0
    with open(run.history) as fh:
        assert len(list(csv.DictReader(fh))) == epochs
    with open(run.manifest) as fh:
        rows = list(csv.DictReader(fh))
    assert set(rows[0]) == {"path", "label", "split", "sha256"}
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    assert (trained_run / "logs").is_dir() and (trained_run / "train.log").exists()
    assert run.load_model().output_shape == (None, 3)
    assert not list(trained_run.glob("*.tmp*"))


def test_refuses_to_overwrite_then_force(colour_data, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", colour_data, "--out", out, "--epochs", "1", "--model", "tutorial-cnn"]
    assert cli(args, capsys)[0] == 0
    before = (out / "model.keras").read_bytes()
    code, _, err = cli(args, capsys)
    assert code == 2
    assert err.count("\n") == 1 and "already exists; pass --resume to continue it or --force" in err
    assert (out / "model.keras").read_bytes() == before
    assert cli([*args, "--force"], capsys)[0] == 0


def test_val_zero_trains_on_every_non_test_image(colour_data, tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "train",
        colour_data,
        "--out",
        out,
        "--epochs",
        "2",
        "--model",
        "tutorial-cnn",
        "--batch-size",
        "8",
    ]
    assert cli([*args, "--val", "0", "--test", "0.25"], capsys)[0] == 0
    with open(out / "manifest.csv") as fh:
        splits = [r["split"] for r in csv.DictReader(fh)]
    assert "val" not in splits and splits.count("test") == 9 and splits.count("train") == 27  # 3 classes x 12
    run = RunDir(out)
    assert run.read_config()["config"]["data"]["val"] == 0.0
    metrics = json.loads(run.metrics.read_text())
    assert metrics["val"] == {} and metrics["test"]["num_images"] == 9
    assert run.load_model().output_shape == (None, 3)
    code, _, err = cli(["train", colour_data, "--out", tmp_path / "bad", "--val", "1.5"], capsys)
    assert code == 2 and err.count("\n") == 1 and "must be in [0, 1)" in err
    assert not (tmp_path / "bad").exists()  # a bad fraction writes nothing


def test_unknown_model_is_one_line_and_writes_nothing(colour_data, tmp_path, capsys):
    code, _, err = cli(["train", colour_data, "--out", tmp_path / "run", "--model", "resnet5"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "unknown model 'resnet5'" in err
    assert not (tmp_path / "run").exists()


def test_fewer_than_two_classes(tmp_path):
    data = write_colour_dataset(tmp_path / "data", per_class=6)
    for name in ("green", "blue"):
        for f in (data / name).iterdir():
            f.unlink()
        (data / name).rmdir()
    with pytest.raises(DataError, match="a classifier needs at least 2"):
        imagerec.train(data, out=tmp_path / "run", **TINY, **QUIET)


def test_image_size_too_small_for_backbone(colour_data, tmp_path):
    with pytest.raises(ImagerecError, match="needs an image size of at least 32, got 16"):
        imagerec.train(colour_data, out=tmp_path / "run", model="mobilenetv3small", image_size=16, **QUIET)


def test_resume_must_match_image_size_and_extend(colour_data, tmp_path):
    out = tmp_path / "run"
    imagerec.train(colour_data, out=out, epochs=2, **TINY, **QUIET)
    with pytest.raises(
        RunError, match=r"cannot resume: data.image_size is 24 but the checkpoint was trained with 32"
    ):
        imagerec.train(colour_data, out=out, resume=True, image_size=24, **QUIET)
    lines = []
    run = imagerec.train(colour_data, out=out, resume=True, epochs=4, log=lines.append)
    assert run.metrics["epochs_completed"] == 4
    assert any("train.epochs: 2 -> 4" in line for line in lines)
    with open(out / "history.csv") as fh:
        assert [int(r["epoch"]) for r in csv.DictReader(fh)] == [0, 1, 2, 3]
    assert "train.epochs: 2 -> 4" in json.dumps(RunDir(out).read_config()["resumed_changes"])


def test_resume_without_a_run_is_refused(colour_data, tmp_path, capsys):
    code, _, err = cli(["train", colour_data, "--out", tmp_path / "none", "--resume"], capsys)
    assert code == 2 and "nothing to resume" in err


def test_nan_loss_is_one_line_and_keeps_the_last_good_model(colour_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        cli(["train", colour_data, "--out", out, "--epochs", "1", "--model", "tutorial-cnn"], capsys)[0] == 0
    )
    good = (out / "model.keras").read_bytes()
    backup = (out / "backup" / "latest").read_text()
    code, _, err = cli(
        [
            "train",
            colour_data,
            "--out",
            out,
            "--resume",
            "--epochs",
            "4",
            "--lr",
            "1e12",
            "--optimizer",
            "sgd",
        ],
        capsys,
    )
    assert code == 2 and err.count("\n") == 1, err
    assert "training diverged: the loss became" in err and "lower --lr" in err
    assert (out / "model.keras").read_bytes() == good
    assert (out / "backup" / "latest").read_text() == backup
    RunDir(out).load_model()  # still loads (hash manifest matches)


def test_class_weights_auto(tmp_path, monkeypatch):
    import keras

    from imagerec.training.recipe import class_weights

    weights = class_weights(np.array([0] * 8 + [1] * 2 + [2] * 2), 3, "auto")
    assert weights[1] == pytest.approx(2.0) and weights[0] == pytest.approx(0.5)
    assert class_weights(np.array([0, 1]), 2, "none") is None
    rng = np.random.default_rng(0)
    from PIL import Image

    data = tmp_path / "data"
    for name, n in (("red", 30), ("green", 8), ("blue", 8)):
        (data / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(make_image(COLOURS[name], rng)).save(data / name / f"{i}.png")
    seen = []  # the class_weight each keras.Model.fit call received (the real fit then runs)
    real_fit = keras.Model.fit

    def fit(self, *args, class_weight=None, **kwargs):
        seen.append(class_weight)
        return real_fit(self, *args, class_weight=class_weight, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", fit)
    run = imagerec.train(data, out=tmp_path / "run", epochs=1, class_weights="auto", **TINY, **QUIET)
    assert run.config["config"]["train"]["class_weights"] == "auto"
    with open(run.path / "manifest.csv") as fh:
        train = [r["label"] for r in csv.DictReader(fh) if r["split"] == "train"]
    counts = {name: train.count(name) for name in run.config["class_names"]}
    balanced = {i: len(train) / (3 * counts[name]) for i, name in enumerate(run.config["class_names"])}
    assert len(seen) == 1 and seen[0] == pytest.approx(balanced), (seen, counts)
    assert (
        seen[0][run.config["class_names"].index("red")] < 1 < seen[0][run.config["class_names"].index("blue")]
    )
    imagerec.train(data, out=tmp_path / "run0", epochs=1, class_weights="none", **TINY, **QUIET)
    assert seen[1] is None
    with pytest.raises(ImagerecError, match="unknown class_weights 'balanced'; choose none or auto"):
        imagerec.train(data, out=tmp_path / "run2", epochs=1, class_weights="balanced", **TINY, **QUIET)


def test_seeded_determinism(colour_data, tmp_path):
    args = {"epochs": 2, "deterministic": True, **TINY, **QUIET}
    a = imagerec.train(colour_data, out=tmp_path / "a", **args)
    b = imagerec.train(colour_data, out=tmp_path / "b", **args)
    c = imagerec.train(colour_data, out=tmp_path / "c", **{**args, "seed": 1})
    assert weights_digest(a.path) == weights_digest(b.path)
    assert weights_digest(a.path) != weights_digest(c.path)
    assert a.config["data_fingerprint"] == b.config["data_fingerprint"]


def test_unknown_option_suggests():
    with pytest.raises(ImagerecError, match=r"unknown training option 'epoch'; did you mean 'epochs'\?"):
        imagerec.train("x", out="y", epoch=3)


def test_models_command_lists_params_and_flops(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = cli(["models", "--image-size", "32"], capsys)
    assert code == 0
    for name in ("tutorial-cnn", "imagerec-cnn", "mobilenetv3small", "resnet50v2"):
        assert name in out
    assert "MFLOPs" in out


def test_transfer_learning_run_from_a_local_weights_file(colour_data, tmp_path):
    """Two-phase fine-tuning end to end: head on a frozen backbone, then the top layers at a lower LR."""
    from imagerec.models.backbones import get_backbone_layer
    from imagerec.models.registry import build_model

    path = tmp_path / "mnv3s.weights.h5"
    source = get_backbone_layer(build_model("mobilenetv3small", 32, 3, 2))
    source.save_weights(path)
    run = imagerec.train(
        colour_data, out=tmp_path / "run", model="mobilenetv3small", weights=str(path), image_size=32,
        epochs=2, fine_tune_layers=5, batch_size=8, **QUIET,
    )  # fmt: skip
    assert run.metrics["epochs_completed"] == 2
    assert run.config["config"]["model"]["weights"] == str(path)
    with open(run.path / "history.csv") as fh:  # phase two appends to phase one's rows, never replaces them
        assert [int(r["epoch"]) for r in csv.DictReader(fh)] == [0, 1]
    model = RunDir(run.path).load_model()
    backbone = get_backbone_layer(model)
    # phase one froze the backbone, phase two unfroze only its top 5 layers: the bottom layers are the file's
    first = next(i for i, layer in enumerate(source.layers) if layer.get_weights())
    np.testing.assert_array_equal(
        backbone.layers[first].get_weights()[0], source.layers[first].get_weights()[0]
    )


def test_the_scan_runs_before_tensorflow_is_imported(tmp_path: Path):
    """``train`` scans the data first, so the scan can use forked worker processes (unsafe once TF has started)."""
    import subprocess
    import sys

    write_colour_dataset(tmp_path / "data", per_class=4)
    code = (
        "import sys\n"
        "import imagerec.training.learner as learner\n"
        "scan = learner.scan_dataset\n"
        "seen = []\n"
        "learner.scan_dataset = lambda *a, **k: seen.append('tensorflow' in sys.modules) or scan(*a, **k)\n"
        "import imagerec\n"
        f"imagerec.train({str(tmp_path / 'data')!r}, out={str(tmp_path / 'run')!r}, epochs=1, log=lambda m: None)\n"
        "assert seen == [False], seen\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_best_model_is_written_before_the_checkpoint_that_records_it(colour_data, tmp_path, monkeypatch):
    """A kill between the two writes must never leave a checkpoint whose recorded best has no model file."""
    from imagerec.training import callbacks

    writes: list[tuple[str, float | None]] = []
    real_save, real_ckpt = callbacks.save_model_file, callbacks.AtomicBackupAndRestore._save_model

    def save(model, path):
        writes.append(("model", None))
        return real_save(model, path)

    def ckpt(self):
        writes.append(("ckpt", self.best))
        return real_ckpt(self)

    monkeypatch.setattr(callbacks, "save_model_file", save)
    monkeypatch.setattr(callbacks.AtomicBackupAndRestore, "_save_model", ckpt)
    imagerec.train(colour_data, out=tmp_path / "run", epochs=3, **TINY, **QUIET)
    assert [kind for kind, _ in writes[:2]] == ["model", "ckpt"], writes  # epoch 1 is always a new best
    best_seen = None
    for i, (kind, best) in enumerate(writes):
        if kind == "ckpt" and best != best_seen:  # this checkpoint records a new best: its model came first
            assert writes[i - 1][0] == "model", writes
            best_seen = best


def test_a_dataset_made_of_symlinks_trains_with_follow_symlinks(colour_data, tmp_path, capsys):
    """A subset assembled from links into a pool (a common way to make one) is refused file by file, with the flag
    named; ``--follow-symlinks`` trains on it."""
    subset = tmp_path / "subset"
    for cls in COLOURS:
        (subset / cls).mkdir(parents=True)
        for src in sorted((colour_data / cls).iterdir())[:8]:
            (subset / cls / src.name).symlink_to(src)
    args = [
        "train",
        subset,
        "--out",
        tmp_path / "run",
        "--epochs",
        "1",
        "--model",
        "tutorial-cnn",
        "--batch-size",
        "8",
    ]
    code, _, err = cli(args, capsys)
    assert code == 2 and "--follow-symlinks" in err and err.count("\n") == 1
    assert not (tmp_path / "run" / "model.keras").exists()
    code, _, err = cli([*args, "--follow-symlinks"], capsys)
    assert code == 0, err
    run = RunDir(tmp_path / "run")
    assert run.read_config()["config"]["data"]["follow_symlinks"] is True
    with open(run.manifest) as fh:
        assert len(list(csv.DictReader(fh))) == 24
