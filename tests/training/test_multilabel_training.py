"""Multi-label training: a sigmoid head on the same layers, binary cross-entropy, thresholds tuned on val."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import imagerec
from imagefixtures import run_cli, write_colour_dataset, write_multilabel_dataset
from imagerec.errors import DataError, ImagerecError
from imagerec.run import RunDir
from imagerec.training import selection
from imagerec.utils import read_json

QUIET = {"log": lambda *_: None, "mixed_precision": "off", "seed": 0}


def test_a_labels_csv_trains_a_sigmoid_head_and_stores_thresholds(multilabel_run: Path):
    run = RunDir(multilabel_run)
    config = read_json(run.config)
    assert config["task"] == "multilabel" and config["config"]["model"]["task"] == "multilabel"
    assert read_json(run.labels) == ["blue", "green", "red"]
    model = run.load_model()
    assert model.get_layer("probs").activation.__name__ == "sigmoid"
    assert model.get_layer("probs").dtype_policy.name == "float32"
    assert model.get_layer("logits").output.shape[-1] == 3  # the embedding is still logits' input
    thresholds = read_json(run.thresholds)
    assert thresholds["split"] == "val" and set(thresholds["thresholds"]) == {"blue", "green", "red"}
    assert all(0 < t < 1 for t in thresholds["thresholds"].values())
    metrics = read_json(run.metrics)
    for split in ("val", "test"):
        assert {"macro_f1", "micro_f1", "mAP", "hamming_loss", "accuracy"} <= set(metrics[split])
    assert metrics["test"]["mAP"] >= 0.9
    assert "val_loss" in (run.path / "history.csv").read_text().splitlines()[0]
    assert not run.calibration.exists()  # no temperature for sigmoid outputs


def test_resume_continues_a_multilabel_run(tmp_path: Path, imagerec_home):
    data = write_multilabel_dataset(tmp_path / "d", n=40, seed=3)
    first = imagerec.train(data, out=tmp_path / "run", epochs=1, batch_size=8, **QUIET)
    assert first.metrics["epochs_completed"] == 1
    again = imagerec.train(data, out=tmp_path / "run", epochs=2, batch_size=8, resume=True, **QUIET)
    assert again.metrics["epochs_completed"] == 2
    assert read_json(RunDir(tmp_path / "run").thresholds)["thresholds"]


def test_task_multilabel_on_a_folder_is_one_clear_error(tmp_path: Path, imagerec_home):
    data = write_colour_dataset(tmp_path / "folder", per_class=4)
    with pytest.raises(DataError, match="--task multilabel needs a CSV with 'path,labels' columns"):
        imagerec.train(data, out=tmp_path / "run", task="multilabel", **QUIET)


def test_task_multiclass_on_a_labels_csv_is_refused(tmp_path: Path, imagerec_home):
    data = write_multilabel_dataset(tmp_path / "d", n=12)
    with pytest.raises(DataError, match="is a multi-label CSV"):
        imagerec.train(data, out=tmp_path / "run", task="multiclass", **QUIET)


def test_unknown_task_is_refused_before_the_run_is_touched(tmp_path: Path, capsys):
    code, _, err = run_cli(
        capsys, "train", "builtin:digits", "--out", str(tmp_path / "run"), "--task", "multi"
    )
    assert code == 2 and "unknown task 'multi'" in err
    assert not (tmp_path / "run").exists()


def test_class_weights_auto_is_refused_for_multi_hot_labels():
    from imagerec.training.recipe import class_weights

    with pytest.raises(ImagerecError, match="multi-label"):
        class_weights(np.eye(3, dtype=np.float32), 3, "auto")


def test_selection_keeps_the_lowest_validation_loss():
    history = {"val_loss": [0.5, 0.3, 0.4], "val_auc": [0.8, 0.85, 0.9], "loss": [0.6, 0.4, 0.3]}
    assert selection.best_epoch(history) == 2
    assert selection.epoch_score({"val_loss": 0.3}, "val_loss", 2) == (-0.3,)
    assert selection.small_validation_warning(np.ones((20, 3), np.float32), 3, False) is not None


def test_class_weights_auto_is_refused_before_training(tmp_path: Path, imagerec_home):
    data = write_multilabel_dataset(tmp_path / "d", n=12)
    with pytest.raises(ImagerecError, match="--class-weights auto weighs one class per image"):
        imagerec.train(data, out=tmp_path / "run", class_weights="auto", **QUIET)
