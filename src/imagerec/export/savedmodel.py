"""SavedModel export for TF Serving: the model plus its preprocessing, with labels returned beside the scores.

Signatures:

* ``serving_default(images: tf.string [N])`` — encoded JPEG/PNG/GIF/BMP bytes, decoded in TensorFlow with
  ``tf.io.decode_image(channels=C, expand_animations=False)`` (first frame), resized to the run's size with the
  run's policy (bilinear, antialiased) and rounded to whole pixel values. TF's decoders are not Pillow: JPEG
  IDCT rounding, EXIF orientation (not applied by TF) and alpha (dropped by TF, composited on white by imagerec)
  can make a few pixels differ from ``imagerec.data.images.load_image``. Clients that need bit-identical input
  send pixels to ``serving_pixels`` instead.
* ``serving_pixels(pixels: tf.float32 [N, S, S, C])`` — pixels 0..255 as ``Classifier.preprocess`` makes them.

Both return ``probabilities`` (float32 [N, K], uncalibrated softmax), ``labels`` (string [N], the top-1 class) and
``embedding`` (float32 [N, D], L2-normalised, for the out-of-distribution score; absent from exports written before
embeddings, and from a model without one). For a multi-label run (``thresholds`` in the spec) ``probabilities`` are
the sigmoid outputs and each ``labels`` element is the image's label set: the classes at or above their thresholds
joined by ``;``, most probable first (``""`` when none), as KServe v2's ``labels`` output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from imagerec.export.formats import PROBABILITIES, model_outputs
from imagerec.openworld.features import EMBEDDING

BACKGROUND = 255.0


def _tf_resize(img, size: int, policy: str):
    """Resize one decoded image (H, W, C) uint8 to (size, size, C) float32 like imagerec's Pillow rules."""
    import tensorflow as tf

    img = tf.cast(img, tf.float32)
    shape = tf.shape(img)
    h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    if policy == "crop":
        side = tf.cast(tf.minimum(h, w), tf.int32)
        img = tf.image.resize_with_crop_or_pad(img, side, side)
    elif policy == "pad":
        scale = size / tf.maximum(h, w)
        new_h = tf.maximum(1, tf.cast(tf.round(h * scale), tf.int32))
        new_w = tf.maximum(1, tf.cast(tf.round(w * scale), tf.int32))
        img = tf.image.resize(img, [new_h, new_w], method="bilinear", antialias=True)
        top, left = (size - new_h) // 2, (size - new_w) // 2
        img = (
            tf.pad(img - BACKGROUND, [[top, size - new_h - top], [left, size - new_w - left], [0, 0]])
            + BACKGROUND
        )
        return tf.clip_by_value(tf.round(img), 0.0, 255.0)
    img = tf.image.resize(img, [size, size], method="bilinear", antialias=True)
    return tf.clip_by_value(tf.round(img), 0.0, 255.0)


def export_artifact(model, spec: dict[str, Any], quantize: str, path: Path, representative=None) -> None:
    """Write a SavedModel folder at ``path`` (quantization: none only)."""
    import keras
    import tensorflow as tf

    size, channels, labels = spec["image_size"], spec["channels"], spec["labels"]
    policy = spec.get("resize", "stretch")
    class_names = tf.constant(labels)
    thresholds = spec.get("thresholds")  # a multi-label run's per-class thresholds

    def label_sets(probs):
        order = tf.argsort(probs, axis=1, direction="DESCENDING")
        chosen = tf.gather(probs >= tf.constant(thresholds, tf.float32), order, batch_dims=1)
        names = tf.ragged.boolean_mask(tf.gather(class_names, order), chosen)
        return tf.strings.reduce_join(names, axis=1, separator=";")

    def outputs(pixels):
        named = _named_outputs(model, pixels)
        probs = named[PROBABILITIES]
        return {**named, "labels": tf.gather(class_names, tf.argmax(probs, axis=1)) if thresholds is None
                else label_sets(probs)}  # fmt: skip

    def decode_one(data):
        img = tf.io.decode_image(data, channels=channels, dtype=tf.uint8, expand_animations=False)
        img.set_shape([None, None, channels])
        return _tf_resize(img, size, policy)

    def from_bytes(images):
        pixels = tf.map_fn(
            decode_one, images, fn_output_signature=tf.TensorSpec([size, size, channels], tf.float32)
        )
        return outputs(pixels)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serving_default", from_bytes, input_signature=[tf.TensorSpec([None], tf.string, name="images")]
    )
    archive.add_endpoint(
        "serving_pixels",
        outputs,
        input_signature=[tf.TensorSpec([None, size, size, channels], tf.float32, name="pixels")],
    )
    archive.write_out(str(path), verbose=False)


def write_float_savedmodel(model, spec: dict[str, Any], path: Path) -> None:
    """A plain float-in SavedModel returning probabilities (and the embedding): the converter input for LiteRT."""
    import keras
    import tensorflow as tf

    shape = [None, spec["image_size"], spec["image_size"], spec["channels"]]
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serving_default",
        lambda image: _named_outputs(model, image),
        input_signature=[tf.TensorSpec(shape, tf.float32, name="image")],
    )
    archive.write_out(str(path), verbose=False)


def _named_outputs(model, x) -> dict[str, Any]:
    import tensorflow as tf

    probs, embedding = model_outputs(model, x)
    named = {PROBABILITIES: tf.cast(probs, tf.float32)}
    if embedding is not None:
        named[EMBEDDING] = tf.cast(embedding, tf.float32)
    return named


class Runtime:
    """Runs an exported SavedModel through its ``serving_pixels`` signature (TF functions are thread-safe)."""

    name = "savedmodel"

    def __init__(self, artifact: Path, record: dict[str, Any], info: dict[str, Any]):
        import tensorflow as tf

        self._loaded = tf.saved_model.load(str(artifact))
        self._fn = self._loaded.signatures["serving_pixels"]

    def outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``(probabilities (N, K), embedding (N, D) or None)``: None for an export written before embeddings."""
        import tensorflow as tf

        out = self._fn(pixels=tf.convert_to_tensor(np.asarray(batch, dtype=np.float32)))
        embedding = out.get(EMBEDDING)
        return out[PROBABILITIES].numpy(), (None if embedding is None else embedding.numpy())

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.outputs(batch)[0]
