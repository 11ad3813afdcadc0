"""The Learner step by step, on a real tiny Keras model and tiny learnable colour data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from imagefixtures import write_colour_dataset
from imagerec.run import RunDir
from imagerec.settings import RunConfig
from imagerec.training.learner import Learner, TrainingInterrupted
from imagerec.training.trainer import apply_overrides

TINY = {"model": "tutorial-cnn", "batch_size": 4, "seed": 0, "mixed_precision": "off", "deterministic": True}


def config(**overrides) -> RunConfig:
    return apply_overrides(RunConfig(), **{**TINY, **overrides})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_colour_dataset(tmp_path_factory.mktemp("learner") / "data", per_class=10, size=16, seed=5)


def test_prepare_resolves_every_automatic_setting_and_writes_nothing(data, tmp_path):
    learner = Learner(data, config(), RunDir(tmp_path / "run"), log=lambda *_: None).prepare()
    assert learner.class_names == ["blue", "green", "red"]
    assert {r.split for r in learner.rows} == {"train", "val", "test"} and len(learner.rows) == 30
    resolved = learner.config.to_dict()
    assert all(v is not None for section in resolved.values() for v in section.values()), resolved
    assert resolved["data"]["image_size"] == 16 and resolved["augment"]["preset"] != "auto"
    assert not (tmp_path / "run").exists()


def test_build_then_train_then_evaluate_with_the_one_batched_loop(data, tmp_path):
    """``train()`` = the steps in order; ``evaluate`` agrees with the model called on the whole split at once."""
    lines: list[str] = []
    learner = Learner(data, config(epochs=4, augment="hflip"), RunDir(tmp_path / "run"), log=lines.append)
    run = learner.train()
    assert lines[0].startswith(
        "data: 24 train / 3 val / 3 test images, 3 classes, 16x16x3; model tutorial-cnn"
    )
    assert lines[-1].startswith("done in ") and lines[-1].endswith(f"; run saved in {run.path}")
    metrics = json.loads((run.path / "metrics.json").read_text())
    assert metrics == run.metrics
    assert list(metrics) == ["val", "test", "epochs_completed", "best_epoch", "fit_seconds", "total_seconds",
                             "images_per_second", "flops_per_image"]  # fmt: skip
    assert list(metrics["test"]) == ["accuracy", "top3_accuracy", "num_images", "ece", "confidence",
                                     "ece_uncalibrated", "accuracy_tta"]  # fmt: skip
    assert (
        metrics["epochs_completed"] == 4
        and metrics["flops_per_image"] == run.config["model"]["flops_per_image"]
    )

    best = RunDir(run.path).load_model()
    learner.arrays["all"] = (np.concatenate([a[0] for a in learner.arrays.values()]),
                             np.concatenate([a[1] for a in learner.arrays.values()]))  # fmt: skip
    x, y = learner.arrays["all"]
    got = learner.evaluate(best, "all")  # 30 images in batches of 4: a partial last batch
    probs = best(x.astype(np.float32), training=False).numpy()
    flipped = best(np.ascontiguousarray(x[:, :, ::-1]).astype(np.float32), training=False).numpy()
    assert got["num_images"] == 30 and got["top3_accuracy"] == 1.0
    assert got["accuracy"] == pytest.approx(float((probs.argmax(1) == y).mean()))
    assert got["accuracy_tta"] == pytest.approx(float(((probs + flipped).argmax(1) == y).mean()))
    assert got["accuracy"] >= 0.8, got  # learnt: chance is 1/3
    assert learner.evaluate(best, "val").keys() == metrics["val"].keys()


def test_no_tta_figure_without_flips_and_top2_for_two_classes(tmp_path):
    data = write_colour_dataset(tmp_path / "data", per_class=8, size=16, seed=1)
    (data / "blue").rename(tmp_path / "blue")  # two classes left: top-k is top-2
    learner = (
        Learner(data, config(epochs=1, augment="none"), log=lambda *_: None).prepare().build(distribute=False)
    )
    got = learner.evaluate(learner.model, "test")
    assert list(got) == ["accuracy", "top2_accuracy", "num_images", "ece", "confidence", "ece_uncalibrated"]
    assert got["top2_accuracy"] == 1.0


def test_lr_find_sweeps_upwards_and_writes_nothing(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    learner = (
        Learner(data, config(), log=lambda *_: None).prepare().build(distribute=False, splits=("train",))
    )
    result = learner.lr_find(steps=12, start_lr=1e-4, end_lr=1.0)
    assert 5 <= len(result.losses) <= 12 and result.learning_rates[0] == pytest.approx(1e-4)
    assert result.learning_rates == sorted(result.learning_rates)
    assert set(learner.arrays) == {"train"} and list(tmp_path.iterdir()) == []


def test_an_interrupt_during_fit_becomes_training_interrupted(data, tmp_path, monkeypatch):
    import keras

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    learner = Learner(data, config(epochs=2), RunDir(tmp_path / "run"), log=lambda *_: None).prepare().build()
    learner.record()
    monkeypatch.setattr(keras.Model, "fit", interrupted)
    with pytest.raises(TrainingInterrupted, match=r"during epoch 1, before any epoch was saved in .*; start again with: .*--resume$") as info:
        learner.fit()
    assert info.value.exit_code == 130
