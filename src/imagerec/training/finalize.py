"""The end of a run, after its last epoch: the kept model gets the BatchNorm statistics of its own weights, the
temperature is fitted on the validation split (``RUN/calibration.json``), and the val/test figures are measured as
the run will answer.

Why the statistics are re-estimated: a BatchNorm layer's moving variance starts at 1 and is an exponential average
of the batches' variances, while the kept weights are those of one epoch. The variance of imagerec-cnn's last conv
on 1/255-scaled Fashion-MNIST is ~2.5e-4, so 0.99^422 of the initial 1 still made up 98% of the moving variance
after a 2-epoch run (0.0147 vs 0.00025): the model normalised by a 58x too large variance and answered 89.6% of the
test images right with a mean top probability of 0.17 (ECE 0.72). Recomputing the statistics with the final weights
over training batches in training mode (as SWA's and timm's ``update_bn`` do) makes inference normalise exactly as
training did, whatever the momentum and the length of the run.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Training batches whose statistics are averaged (at most one pass over the data): at batch 256 ~26k images.
BN_BATCHES = 100


def batchnorm_layers(model) -> list:
    """The BatchNorm layers that training updates (nested models included; frozen ones are left alone)."""
    from keras import layers

    from imagerec.models.registry import sublayers

    return [
        layer
        for layer in sublayers(model)
        if isinstance(layer, layers.BatchNormalization) and layer.trainable
    ]


def reestimate_batchnorm(model, batches, max_batches: int = BN_BATCHES) -> int:
    """Set every trainable BatchNorm layer's moving mean and variance to the average batch statistics of ``model``'s
    own weights over ``max_batches`` of ``batches`` (training-mode passes; no weight changes).

    Args:
        model: a Keras model.
        batches: a ``tf.data.Dataset`` of image batches or ``(images, labels)`` batches, as training sees them.
        max_batches: how many batches to average (fewer when the dataset is shorter).

    Returns:
        How many layers were updated (0: the model has no trainable BatchNorm, or ``batches`` is empty).
    """
    import tensorflow as tf

    norms = batchnorm_layers(model)
    if not norms:
        return 0
    momenta = [layer.momentum for layer in norms]
    # momentum is read when traced: with 0, each pass leaves exactly its batch's statistics in the variables
    for layer in norms:
        layer.momentum = 0.0
    step = tf.function(lambda x: model(x, training=True))
    sums = [[0.0, 0.0] for _ in norms]
    seen = 0
    try:
        for batch in batches.take(max_batches):
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            step(x)
            n = int(x.shape[0])
            for total, layer in zip(sums, norms, strict=True):
                total[0] = total[0] + n * layer.moving_mean.numpy()
                total[1] = total[1] + n * layer.moving_variance.numpy()
            seen += n
    finally:
        for layer, momentum in zip(norms, momenta, strict=True):
            layer.momentum = momentum
    if not seen:
        return 0
    for (mean, variance), layer in zip(sums, norms, strict=True):
        layer.moving_mean.assign(mean / seen)
        layer.moving_variance.assign(variance / seen)
    return len(norms)


def final_model(run, batches):
    """The run's kept model with BatchNorm statistics of its own weights (:func:`reestimate_batchnorm` over the
    training ``batches``), saved over the kept file (atomically, with its hash); the model."""
    model = run.load_model()
    if reestimate_batchnorm(model, batches):
        run.save_model(model)
    return model


def write_reference(run, fn, images: np.ndarray, y: np.ndarray, num_classes: int, batch_size: int) -> None:
    """The training ``images``' embeddings (as the runtime callable ``fn`` gives them; at most
    ``FIT_IMAGES`` of them, class-stratified) in a few MB, ``RUN/reference.npz``: what out-of-distribution scores
    are measured against (:mod:`imagerec.openworld`)."""
    from imagerec.openworld.reference import Reference

    if (reference := Reference.of_images(fn, images, y, num_classes, batch_size)) is not None:
        reference.save(run.reference)


def calibrate_run(run, fn, images: np.ndarray, y: np.ndarray, batch_size: int, log=print) -> float:
    """Fit the temperature on the validation ``images`` (labels ``y``) as the runtime callable ``fn`` answers
    them, write ``RUN/calibration.json``; return the temperature the run answers with.

    No ``unknown`` threshold unless ``imagerec calibrate`` had stored one with a target accuracy: a resumed run
    then keeps that target, re-fitted to the new weights (and so for the out-of-distribution threshold's
    ``ood_keep``, against the new reference). With fewer than ``MIN_VAL_IMAGES`` validation images
    nothing is fitted (a few images, all answered right, would drive the temperature to its sharpest bound) and
    the run keeps the calibration it has (none: 1.0). Multi-label runs (multi-hot ``y``) are left alone.
    """
    from imagerec.evaluation.calibration import calibration_record
    from imagerec.runtime import predict_in_batches
    from imagerec.training.selection import MIN_VAL_IMAGES
    from imagerec.utils import atomic_write_json, read_json

    if np.ndim(y) != 1:  # multi-hot targets: sigmoid outputs, no softmax temperature
        return 1.0
    previous = read_json(run.calibration) if run.calibration.exists() else {}
    if len(y) < MIN_VAL_IMAGES:
        if len(y):
            log(
                f"confidence left uncalibrated: {len(y)} validation images are too few to fit a temperature "
                f"(fewer than {MIN_VAL_IMAGES})"
            )
        return float(previous.get("temperature", 1.0))
    raw, emb = predict_in_batches(fn, images, batch_size, embedding=True)
    record = calibration_record(raw, y, "val", previous.get("target_accuracy"))
    keep = previous.get("ood_keep")
    if keep is not None and emb is not None and run.reference.exists():
        from imagerec.openworld import ood_threshold
        from imagerec.openworld.reference import Reference

        threshold = ood_threshold(Reference.load(run.reference).score(emb), keep)
        record.update(ood_threshold=None if threshold is None else round(threshold, 6), ood_keep=keep)
    atomic_write_json(run.calibration, {**record, "fitted_by": "train"})
    return float(record["temperature"])


def calibrate_and_baseline(run, model, fn, images: np.ndarray, y: np.ndarray, batch_size: int, log=print) -> float:
    """:func:`calibrate_run`, then the drift baseline of the calibrated model's answers to the validation
    ``images`` (``RUN/drift.json``, :mod:`imagerec.monitoring.drift`): what a server's drift gauges compare live
    answers with. No baseline without validation images."""
    temperature = calibrate_run(run, fn, images, y, batch_size, log)
    if len(images):
        from imagerec.classifier import Classifier
        from imagerec.monitoring.drift import write_baseline
        from imagerec.run import RunDir

        write_baseline(Classifier(RunDir(run.path), model, runtime_fn=fn), images)
    return temperature


def split_metrics(raw: np.ndarray, y: np.ndarray, temperature: float) -> dict[str, Any]:
    """Accuracy, top-5, and confidence as the run answers ``y``'s images (``temperature`` applied to ``raw``):
    ``ece``, ``confidence`` (the mean top probability) and ``ece_uncalibrated``."""
    from imagerec.evaluation.metrics import expected_calibration_error, top_k_accuracy
    from imagerec.prediction import softmax_temperature

    probs = softmax_temperature(raw, temperature)
    k = min(5, probs.shape[1])
    return {
        "accuracy": float((probs.argmax(1) == y).mean()),
        f"top{k}_accuracy": top_k_accuracy(y, probs, k),
        "num_images": int(len(y)),
        "ece": expected_calibration_error(y, probs),
        "confidence": float(probs.max(1).mean()),
        "ece_uncalibrated": expected_calibration_error(y, raw),
    }
