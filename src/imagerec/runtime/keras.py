"""The ``keras`` runtime: a run's model behind a ``tf.function`` with a fixed input signature.

Compiled once per input shape, no ``model.predict`` per call (its per-call set-up costs more than a small batch).
"""

from __future__ import annotations

import threading

import numpy as np


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
