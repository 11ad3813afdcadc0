"""How a model is trained: one-hot labels and class weights for the loss, optimizer, learning-rate schedule, metrics,
numeric precision, which backbone layers fine-tune.

One home for the recipe, shared by ``imagerec train`` (both phases of transfer learning) and ``imagerec lr-find``.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np

from imagerec.errors import ImagerecError
from imagerec.settings import RunConfig


def steps_for(n: int, batch_size: int) -> int:
    """Optimisation steps in one epoch of ``n`` images (a partial last batch counts)."""
    return max(1, math.ceil(n / batch_size))


def one_hot(ds, num_classes: int):
    """``(images, int labels)`` batches -> ``(images, one-hot labels)``, as the categorical loss expects.

    Multi-hot targets (a multi-label dataset's) are what the binary loss expects already: returned as they are.
    """
    import tensorflow as tf

    from imagerec.data.pipeline import parallel_calls

    if ds.element_spec[1].shape.rank == 2:
        return ds

    return ds.map(lambda x, y: (x, tf.one_hot(y, num_classes)), num_parallel_calls=parallel_calls())


def class_weights(labels: np.ndarray, num_classes: int, mode: str) -> dict[int, float] | None:
    """``auto``: scikit-learn's balanced weights (``n / (classes x count)``); ``none``: None (every class 1)."""
    if mode == "none":
        return None
    if mode != "auto":
        raise ImagerecError(f"unknown class_weights {mode!r}; choose none or auto")
    if labels.ndim == 2:
        raise ImagerecError(
            "--class-weights auto weighs one class per image; a multi-label run's classes are weighed by their "
            "own thresholds (tuned on the validation split): train it with --class-weights none"
        )
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(labels)
    weights = compute_class_weight("balanced", classes=present, y=labels)
    out = {int(c): float(w) for c, w in zip(present, weights, strict=True)}
    return {c: out.get(c, 1.0) for c in range(num_classes)}


def lr_schedule(config: RunConfig, steps_per_epoch: int, epochs: int, lr: float):
    """The learning rate of ``config.train.schedule`` over ``epochs``: a float (constant) or a Keras schedule.

    ``cosine`` warms up for ``warmup_epochs`` from ``lr / 25``; ``onecycle`` warms up over 30% of the steps; both
    then decay to 1% of ``lr``.
    """
    import keras

    t = config.train
    total = max(1, steps_per_epoch * epochs)
    warmup = min(int(t.warmup_epochs * steps_per_epoch), total // 2)
    if t.schedule == "constant":
        return lr
    if t.schedule == "onecycle":
        warmup = max(1, int(0.3 * total))
    if t.schedule not in ("cosine", "onecycle"):
        raise ImagerecError(f"unknown schedule {t.schedule!r}; choose cosine, onecycle or constant")
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=lr / 25 if warmup else lr,
        decay_steps=max(1, total - warmup),
        warmup_target=lr if warmup else None,
        warmup_steps=warmup,
        alpha=0.01,
    )


def make_optimizer(config: RunConfig, learning_rate):
    """``config.train.optimizer`` (``adamw`` or ``sgd``) at ``learning_rate`` (a float or a schedule)."""
    import keras

    t = config.train
    if t.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=t.weight_decay)
    if t.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=learning_rate, momentum=0.9, nesterov=True)
    raise ImagerecError(f"unknown optimizer {t.optimizer!r}; choose adamw or sgd")


def compile_model(model, config: RunConfig, learning_rate, metrics: bool = True) -> None:
    """Compile ``model`` with the configured optimizer at ``learning_rate`` (a float or a schedule, see
    :func:`lr_schedule`), label-smoothed cross-entropy on one-hot labels, and accuracy + top-5 metrics.

    A multi-label model (``config.model.task``): label-smoothed binary cross-entropy on multi-hot labels, and the
    binary accuracy and the ROC AUC over the classes as metrics (its epoch is chosen on the validation loss).
    """
    import keras

    if config.model.task == "multilabel":
        model.compile(
            optimizer=make_optimizer(config, learning_rate),
            loss=keras.losses.BinaryCrossentropy(label_smoothing=config.train.label_smoothing),
            metrics=[
                keras.metrics.BinaryAccuracy(name="binary_accuracy"),
                keras.metrics.AUC(multi_label=True),
            ]
            if metrics
            else None,
        )
        return

    model.compile(
        optimizer=make_optimizer(config, learning_rate),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.train.label_smoothing),
        metrics=[
            "accuracy",
            keras.metrics.TopKCategoricalAccuracy(k=min(5, model.output_shape[-1]), name="top5"),
        ]
        if metrics
        else None,
    )


def unfreeze_top(backbone, n: int) -> None:
    """Unfreeze the top ``n`` layers of the backbone; BatchNorm stays frozen (inference mode)."""
    from keras import layers

    backbone.trainable = True
    for i, layer in enumerate(backbone.layers):
        layer.trainable = i >= len(backbone.layers) - n and not isinstance(layer, layers.BatchNormalization)


def cpu_has_bf16() -> bool:
    """True on CPUs with native bfloat16 matrix units (AVX512-BF16 or AMX), where oneDNN runs bf16 convs fast."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def choose_precision(mode: str) -> str:
    """The Keras dtype policy for ``mode`` (``off`` | ``bf16`` | ``auto``).

    ``auto`` picks ``mixed_bfloat16`` on CPUs with AVX512-BF16/AMX (measured 1.4-2.8x faster than float32 for
    imagerec's conv nets on a 2-core AVX512-BF16 EPYC, same accuracy) and on GPUs; float32 elsewhere, where
    bfloat16 is emulated and slower.
    """
    if mode == "off":
        return "float32"
    if mode == "bf16":
        return "mixed_bfloat16"
    if mode != "auto":
        raise ImagerecError(f"unknown mixed_precision {mode!r}; choose off, bf16 or auto")
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU") or cpu_has_bf16():
        return "mixed_bfloat16"
    return "float32"


@contextlib.contextmanager
def global_policy_kept():
    """Restore Keras' global dtype policy on the way out: a run trained in ``mixed_bfloat16`` must not leave every
    model the caller builds next computing in bf16 (a test session's later models answered differently)."""
    import sys

    # not imported yet (the scan runs before TensorFlow loads): the caller has Keras' default policy, float32
    keras = sys.modules.get("keras")
    before = keras.mixed_precision.global_policy() if keras is not None else "float32"
    try:
        yield
    finally:
        keras = sys.modules.get("keras")
        if keras is not None:
            keras.mixed_precision.set_global_policy(before)


def set_precision(mode: str) -> str:
    """Set Keras' global dtype policy for ``mode``; return the policy's name."""
    import keras

    policy = choose_precision(mode)
    keras.mixed_precision.set_global_policy(policy)
    return policy
