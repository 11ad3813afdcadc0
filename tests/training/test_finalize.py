"""The end of a run (``training/finalize.py``): BatchNorm statistics of the kept weights, the temperature fitted on
val, and the final figures as the run answers."""

from __future__ import annotations

import json

import numpy as np
import pytest

import imagerec
from imagefixtures import write_colour_dataset
from imagerec.run import RunDir
from imagerec.training.finalize import batchnorm_layers, reestimate_batchnorm

QUIET = {"log": lambda *_: None}


@pytest.fixture
def float32():
    """Exact float32 comparisons, whatever global dtype policy an earlier test (a bf16 run) left behind."""
    import keras

    before = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    yield
    keras.mixed_precision.set_global_policy(before)


def tiny_bn_model():
    """conv -> BN -> ReLU -> conv -> frozen BN -> pool -> softmax, nested one level inside an outer model."""
    import keras
    from keras import layers

    inputs = keras.Input((6, 6, 2))
    x = layers.Conv2D(4, 3, use_bias=False, name="conv")(inputs)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.Conv2D(3, 1)(layers.ReLU()(x))
    frozen = layers.BatchNormalization(name="frozen")
    frozen.trainable = False
    x = layers.GlobalAveragePooling2D()(frozen(x))
    inner = keras.Model(inputs, layers.Dense(3, activation="softmax")(x), name="inner")
    outer_in = keras.Input((6, 6, 2))
    return keras.Model(outer_in, inner(outer_in)), inner


def test_reestimated_statistics_are_the_batches_own_and_inference_matches_training_mode(float32):
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model, inner = tiny_bn_model()
    rng = np.random.default_rng(0)
    # a small variance, as convs on 1/255-scaled pixels have
    x = (0.5 + 0.02 * rng.standard_normal((40, 6, 6, 2))).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 40)]
    bn, frozen = inner.get_layer("bn"), inner.get_layer("frozen")
    assert batchnorm_layers(model) == [bn]  # nested layers found, the frozen one left alone
    weights = [w.copy() for w in model.get_weights()]
    # the old behaviour: the moving variance still holds its start, so inference does not match training mode
    assert not np.allclose(model(x, training=False), model(x, training=True), atol=1e-3)

    batches = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)  # 5 batches, as training sees them
    assert reestimate_batchnorm(model, batches, max_batches=100) == 1

    conv = keras.Model(inner.input, bn.input)
    parts = [conv(x[i : i + 8]).numpy() for i in range(0, 40, 8)]
    mean = np.mean([p.mean(axis=(0, 1, 2)) for p in parts], axis=0)
    variance = np.mean([p.var(axis=(0, 1, 2)) for p in parts], axis=0)
    np.testing.assert_allclose(bn.moving_mean.numpy(), mean, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(bn.moving_variance.numpy(), variance, rtol=1e-4, atol=1e-9)
    assert bn.momentum == 0.99 and np.all(frozen.moving_variance.numpy() == 1.0)
    assert all(np.array_equal(a, b) for a, b in zip(weights[:1], model.get_weights()[:1], strict=True))

    # one batch holding all the data: inference now normalises exactly as training mode does
    reestimate_batchnorm(model, tf.data.Dataset.from_tensor_slices(x).batch(40))
    np.testing.assert_allclose(model(x, training=False), model(x, training=True), atol=1e-5)


def test_nothing_to_do_without_batchnorm_or_batches(float32):
    import keras
    import tensorflow as tf

    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    assert reestimate_batchnorm(plain, tf.data.Dataset.from_tensor_slices(np.zeros((4, 4))).batch(2)) == 0
    model, inner = tiny_bn_model()
    empty = tf.data.Dataset.from_tensor_slices(np.zeros((0, 6, 6, 2), np.float32)).batch(2)
    assert reestimate_batchnorm(model, empty) == 0
    assert np.all(inner.get_layer("bn").moving_variance.numpy() == 1.0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """3 colours x 70 images: with ``val=0.5``, 105 validation images (a temperature is fitted from 100)."""
    return write_colour_dataset(tmp_path_factory.mktemp("finalize") / "data", per_class=70, size=16, seed=3)


def test_a_run_keeps_batchnorm_statistics_of_its_weights_and_a_fitted_temperature(data, tmp_path):
    import keras

    from imagerec.classifier import Classifier
    from imagerec.evaluation.calibration import T_BOUNDS
    from imagerec.evaluation.data import run_split

    out = tmp_path / "run"
    kw = {"model": "imagerec-cnn", "batch_size": 8, "seed": 0, "mixed_precision": "off", "augment": "none",
          "val": 0.5}  # fmt: skip
    run = imagerec.train(data, out=out, epochs=1, **kw, **QUIET)

    # the kept model's moving variance is the data's, not what is left of its start (0.9^11 = 31% of 1)
    model = RunDir(out).load_model()
    clf = Classifier.load(out)
    images = run_split(clf, "train").images.astype(np.float32)
    norms = batchnorm_layers(model)
    assert len(norms) == 2  # on the 8 and 4 px maps
    for bn in norms:
        feats = keras.Model(model.input, bn.input)(images, training=True).numpy()
        ratio = bn.moving_variance.numpy() / feats.var(axis=(0, 1, 2))
        assert np.all((0.5 < ratio) & (ratio < 1.5)), (bn.name, ratio)

    # the temperature is fitted on val at the end of training, with no 'unknown' threshold
    record = json.loads((out / "calibration.json").read_text())
    assert record["fitted_by"] == "train" and record["split"] == "val" and record["num_images"] == 105
    assert record["threshold"] is None and record["target_accuracy"] is None
    assert T_BOUNDS[0] <= record["temperature"] <= T_BOUNDS[1] and record["temperature"] != 1.0
    assert clf.temperature == record["temperature"]
    # training's figures are the calibrated answers, as `imagerec evaluate` measures them
    test = run.metrics["test"]
    assert {"ece", "confidence", "ece_uncalibrated"} <= set(test)
    assert test["ece"] == pytest.approx(clf.evaluate(split="test", write=False)["ece"], abs=1e-6)

    # resume: the target accuracy `imagerec calibrate` stored is kept, its threshold re-fitted to the new weights
    # (and so the out-of-distribution threshold's share kept, against the new weights' reference)
    assert (
        out / "reference.npz"
    ).is_file() and "ood_threshold" not in record  # OOD answers: calibrate's opt-in
    stale = {**record, "target_accuracy": 0.5, "threshold": 0.9, "ood_keep": 0.9, "ood_threshold": -1.0}
    (out / "calibration.json").write_text(json.dumps(stale))
    imagerec.train(data, out=out, resume=True, epochs=2, **QUIET)
    again = json.loads((out / "calibration.json").read_text())
    assert again["target_accuracy"] == 0.5 and again["threshold"] is not None
    assert again["ood_keep"] == 0.9 and again["ood_threshold"] > 0
    assert again["fitted_by"] == "train"
    assert Classifier.load(out).temperature == again["temperature"]


def test_too_few_validation_images_leave_the_confidence_uncalibrated(tmp_path):
    data = write_colour_dataset(tmp_path / "data", per_class=10, size=16, seed=4)
    lines: list[str] = []
    run = imagerec.train(data, out=tmp_path / "run", model="tutorial-cnn", epochs=1, batch_size=8, seed=0,
                         mixed_precision="off", log=lines.append)  # fmt: skip
    assert not (run.path / "calibration.json").exists()
    assert any("3 validation images are too few to fit a temperature" in line for line in lines), lines
    assert run.metrics["test"]["ece"] == run.metrics["test"]["ece_uncalibrated"]


def test_the_reference_is_fitted_on_a_class_stratified_sample_of_a_large_train_split(
    data, tmp_path, monkeypatch
):
    from imagerec.classifier import Classifier
    from imagerec.evaluation.data import run_split
    from imagerec.openworld import reference
    from imagerec.runtime import predict_in_batches

    monkeypatch.setattr(reference, "FIT_IMAGES", 30)
    out = tmp_path / "run"
    kw = {"model": "imagerec-cnn", "batch_size": 8, "mixed_precision": "off", "augment": "none", "val": 0.5}
    imagerec.train(data, out=out, epochs=1, **kw, **QUIET)
    clf = Classifier.load(out)
    train = run_split(clf, "train")
    rows = reference.fit_rows(train.y)
    assert len(train.y) > 30 and len(rows) == 30
    fitted = reference.Reference.load(out / "reference.npz")
    counts = fitted.class_counts
    assert counts.sum() == 30 and counts.tolist() == np.bincount(train.y[rows]).tolist()
    # the class means are those of these very images' embeddings, each with its own label
    _, emb = predict_in_batches(clf.raw_outputs, train.images[rows], 8, embedding=True)
    want = reference.Reference.fit(emb, train.y[rows], len(clf.labels)).means
    np.testing.assert_allclose(fitted.means, want, atol=1e-4)

    # `imagerec calibrate` rebuilds a missing reference from the same rows
    (out / "reference.npz").unlink()
    Classifier.load(out).calibrate(ood_keep=0.9)
    assert reference.Reference.load(out / "reference.npz").class_counts.tolist() == counts.tolist()
