"""Which epoch a run keeps: ties in val accuracy go to the lower val loss, across a resume; the closing line and
metrics.json name the kept epoch; a small validation split is warned about; a training ends without warnings."""

from __future__ import annotations

import io
import json
import logging
import math

import keras
import numpy as np
import pytest

import imagerec
from imagefixtures import write_colour_dataset
from imagerec.training.callbacks import AtomicBackupAndRestore, AtomicBestModel
from imagerec.training.selection import best_epoch, kept_text, small_validation_warning


def _tiny_model() -> keras.Model:
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    return model


def _callbacks(tmp_path, model):
    backup = AtomicBackupAndRestore(tmp_path / "backup")
    best = AtomicBestModel(tmp_path / "model.keras", backup=backup)
    for cb in (best, backup):
        cb.set_model(model)
        cb.on_train_begin()
    return best, backup


def _epoch(model, callbacks, epoch: int, val_accuracy: float, val_loss: float) -> None:
    model.layers[0].kernel.assign(
        np.full((4, 2), float(epoch), np.float32)
    )  # each epoch's weights: its number
    logs = {"loss": 0.5, "accuracy": 0.9, "val_accuracy": val_accuracy, "val_loss": val_loss}
    for cb in callbacks:
        cb.on_epoch_begin(epoch)
    for cb in callbacks:  # the model file first, then the checkpoint, as in Learner.callbacks
        cb.on_epoch_end(epoch, logs)


def _published_epoch(tmp_path) -> int:
    return int(keras.saving.load_model(tmp_path / "model.keras").layers[0].kernel.numpy()[0, 0])


def test_a_tie_in_val_accuracy_goes_to_the_lower_val_loss_and_survives_a_resume(tmp_path):
    model = _tiny_model()
    callbacks = _callbacks(tmp_path, model)
    _epoch(model, callbacks, 0, 0.9556, 0.80)
    _epoch(model, callbacks, 1, 1.0, 0.675)  # the first perfect epoch: kept for now
    _epoch(model, callbacks, 2, 1.0, 0.30)  # a tie with a lower loss: kept instead
    _epoch(model, callbacks, 3, 1.0, 0.35)  # a tie with a higher loss: not kept
    _epoch(model, callbacks, 4, 0.9778, 0.10)  # lower accuracy, whatever its loss: not kept
    assert _published_epoch(tmp_path) == 2
    assert callbacks[1].kept() == {"epoch": 3, "val_accuracy": 1.0, "val_loss": 0.30}  # 1-based

    # --resume: new callbacks restore the kept epoch's score from the checkpoint and keep applying the rule
    resumed = _callbacks(tmp_path, _tiny_model())
    _epoch(resumed[0].model, resumed, 5, 1.0, 0.31)
    assert _published_epoch(tmp_path) == 2
    _epoch(resumed[0].model, resumed, 6, 1.0, 0.29)
    assert _published_epoch(tmp_path) == 6 and resumed[1].kept()["epoch"] == 7


def test_a_backup_from_before_the_tie_break_lets_a_tie_replace_its_best(tmp_path):
    model = _tiny_model()
    callbacks = _callbacks(tmp_path, model)
    _epoch(model, callbacks, 0, 1.0, 0.5)
    meta_path = tmp_path / "backup" / "ckpt-0001" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["best"] = 1.0  # the old format: a bare val accuracy, no loss, no best_epoch
    del meta["best_epoch"]
    meta_path.write_text(json.dumps(meta))
    resumed = _callbacks(tmp_path, _tiny_model())
    assert resumed[1].kept() is None
    _epoch(resumed[0].model, resumed, 1, 1.0, 0.9)
    assert _published_epoch(tmp_path) == 1 and resumed[1].kept()["epoch"] == 2


def test_without_validation_the_last_epoch_is_kept(tmp_path):
    model = _tiny_model()
    backup = AtomicBackupAndRestore(tmp_path / "backup")
    best = AtomicBestModel(tmp_path / "model.keras", monitor=None, backup=backup)
    for cb in (best, backup):
        cb.set_model(model)
        cb.on_train_begin()
    for epoch, acc in enumerate([0.5, 0.9, 0.7]):
        model.layers[0].kernel.assign(np.full((4, 2), float(epoch), np.float32))
        for cb in (best, backup):
            cb.on_epoch_begin(epoch)
        for cb in (best, backup):
            cb.on_epoch_end(epoch, {"loss": 0.4, "accuracy": acc})
    assert _published_epoch(tmp_path) == 2 and backup.kept() == {"epoch": 3}
    assert kept_text(backup.kept(), 3) == "kept epoch 3 of 3 (the last: no validation split)"


def test_the_plots_mark_the_epoch_the_rule_keeps():
    history = {
        "val_accuracy": [0.9, 1.0, 1.0, 1.0],
        "val_loss": [0.9, 0.6, 0.3, math.nan],
        "loss": [1, 1, 1, 1],
    }
    assert best_epoch(history) == 3
    assert best_epoch({"loss": [0.9, 0.8], "accuracy": [0.5, 0.4]}) == 2  # no validation: the last


@pytest.mark.parametrize(
    ("labels", "warned"),
    [([0] * 15 + [1] * 15 + [2] * 15, True), ([0] * 60 + [1] * 60, False), ([0] * 200 + [1] * 5, True)],
)
def test_a_small_validation_split_is_warned_about(labels, warned):
    text = small_validation_warning(labels, 3 if 2 in labels else 2, given_splits=False)
    assert (text is not None) == warned
    if warned:
        assert text.startswith(f"warning: only {len(labels)} validation images") and "--val 0.2" in text
        assert "--val 0" in text
    assert small_validation_warning([], 3, given_splits=False) is None
    assert "move more images into the val split" in small_validation_warning([0, 1, 2], 3, given_splits=True)


def test_a_training_names_its_kept_epoch_warns_about_a_small_val_split_and_ends_without_warnings(
    tmp_path, recwarn, capfd, monkeypatch
):
    """Three tiny trainings in one process (the Python API, as a notebook or a sweep runs them): no Keras
    "shuffle=True was passed" warning, no "tf.function retracing" warning (the final evaluation traced one
    tf.function per split before; TensorFlow warns at 5 traces of one function in its last 10 calls)."""
    from tensorflow.python.eager.polymorphic_function import polymorphic_function

    # a fresh tracing detector: earlier tests in this process may have used up its two warnings
    monkeypatch.setattr(
        polymorphic_function,
        "_frequent_tracing_detector_manager",
        polymorphic_function._FrequentTracingDetectorManager(),
    )
    tf_log = io.StringIO()
    handler = logging.StreamHandler(tf_log)
    logging.getLogger("tensorflow").addHandler(handler)
    data = write_colour_dataset(tmp_path / "colours", per_class=8)
    lines: list[str] = []
    try:
        for i in range(3):
            run = imagerec.train(
                data, out=tmp_path / f"run{i}", epochs=2, model="tutorial-cnn", batch_size=8, image_size=16, seed=i,
                log=lines.append,
            )  # fmt: skip
    finally:
        logging.getLogger("tensorflow").removeHandler(handler)
    metrics = json.loads((run.path / "metrics.json").read_text())
    assert metrics["best_epoch"] in (1, 2)
    done = [line for line in lines if line.startswith("done in ")]
    assert len(done) == 3 and f"kept epoch {metrics['best_epoch']} of 2 (val loss " in done[-1]
    assert (
        sum(line.startswith("warning: only 3 validation images (1 in the smallest class)") for line in lines)
        == 3
    )

    messages = (
        [str(w.message) for w in recwarn]
        + tf_log.getvalue().splitlines()
        + capfd.readouterr().err.splitlines()
    )
    assert not [m for m in messages if "shuffle=True" in m or "retracing" in m], messages
