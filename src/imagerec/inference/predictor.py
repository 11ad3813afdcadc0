"""Runtimes that turn a uint8 image batch into probabilities.

``keras``: the run's ``model.keras`` behind a ``tf.function`` with a fixed input signature (compiled once, no
``model.predict`` per call). Other runtimes (``tflite``, ``onnx``, ``savedmodel``) register themselves in
``RUNTIMES`` from ``imagerec.export``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from imagerec.errors import ImagerecError


class KerasRuntime:
    name = "keras"

    def __init__(self, model, image_size: int, channels: int):
        import tensorflow as tf

        self.model = model
        self.input_shape = (image_size, image_size, channels)
        spec = tf.TensorSpec((None, *self.input_shape), tf.float32)
        self._fn = tf.function(lambda x: model(x, training=False), input_signature=[spec])
        self._lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        x = tf.convert_to_tensor(np.asarray(batch, dtype=np.float32))
        return self._fn(x).numpy().astype(np.float32, copy=False)


#: runtime name -> factory(run_path, info) -> callable(batch uint8/float32 (N,H,W,C)) -> probs (N, K)
RUNTIMES: dict[str, Callable] = {}


def get_runtime(name: str) -> Callable:
    if name == "keras":
        return lambda model, info: KerasRuntime(model, info["image_size"], info["channels"])
    try:
        from imagerec.export import formats  # noqa: F401 - registers exported runtimes
    except ImportError:
        pass
    if name not in RUNTIMES:
        raise ImagerecError(
            f"unknown or unavailable runtime {name!r}; choose one of keras, {', '.join(RUNTIMES) or '(none exported)'}"
        )
    return RUNTIMES[name]


def softmax_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Rescale probabilities by a temperature (T=1: unchanged), via their logs."""
    if temperature == 1.0:
        return probs
    logits = np.log(np.clip(probs, 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


__all__ = ["KerasRuntime", "RUNTIMES", "get_runtime", "softmax_temperature", "Path"]
