"""The ``keras`` runtime: a run's model behind a ``tf.function`` with a fixed input signature.

Compiled once per input shape, no ``model.predict`` per call (its per-call set-up costs more than a small batch).
The function returns the probabilities and the embedding (:func:`imagerec.openworld.features.with_embedding`) in
one pass; a model without a ``logits`` layer has probabilities only.
"""

from __future__ import annotations

import numpy as np

from imagerec.errors import ImagerecError


class KerasRuntime:
    name = "keras"

    def __init__(self, model, image_size: int, channels: int):
        import tensorflow as tf

        from imagerec.openworld.features import with_embedding

        self.model = model
        self.input_shape = (image_size, image_size, channels)
        try:
            both = with_embedding(model)
        except ImagerecError:
            both = None
        self.has_embedding = both is not None
        spec = tf.TensorSpec((None, *self.input_shape), tf.float32)
        if both is not None:
            self._fn = tf.function(lambda x: tuple(both(x, training=False)), input_signature=[spec])
        else:
            self._fn = tf.function(lambda x: (model(x, training=False),), input_signature=[spec])

    def outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``(probabilities (N, K), embedding (N, D) or None)`` of a uint8-valued batch ``(N, S, S, C)``."""
        import tensorflow as tf

        out = self._fn(tf.convert_to_tensor(np.asarray(batch, dtype=np.float32)))
        probs = out[0].numpy().astype(np.float32, copy=False)
        return probs, (out[1].numpy().astype(np.float32, copy=False) if len(out) > 1 else None)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.outputs(batch)[0]
