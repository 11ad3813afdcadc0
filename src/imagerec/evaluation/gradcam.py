"""Grad-CAM (Selvaraju et al., 2017): where in the image the model looked for the class it answered.

The heatmap is ``ReLU(sum_c w_c * A_c)`` over the channels ``A_c`` of the model's last ``Conv2D`` layer, with
``w_c`` the spatial mean of the gradient of the class score (the pre-softmax ``logits`` layer when the model has
one) with respect to ``A_c``. For transfer-learning models the last ``Conv2D`` sits inside the nested ``backbone``
model: the model is split into the layers before the backbone, the backbone (with its last conv map as a second
output) and the head after it, so that one ``tf.GradientTape`` sees the whole path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from imagerec.errors import ImagerecError


def _last_conv(model):
    from keras import layers

    convs = [layer for layer in model.layers if isinstance(layer, layers.Conv2D)]
    return convs[-1] if convs else None


class GradCAM:
    """A callable ``(uint8 batch, class indices or None) -> heatmaps (N, S, S) in 0..1`` for one Keras model."""

    def __init__(self, model):
        import keras

        from imagerec.models.backbones import get_backbone_layer

        self.model = model
        score_layer = _find(model, "logits")
        backbone = get_backbone_layer(model)
        conv = _last_conv(model)
        if conv is not None or backbone is None:
            if conv is None:
                raise ImagerecError(
                    f"model {model.name!r} has no Conv2D layer; Grad-CAM needs a convolutional model"
                )
            score = score_layer.output if score_layer is not None else model.output
            self.layer_name = conv.name
            self._parts = [keras.Model(model.inputs, [conv.output, score])]
            return
        inner = _last_conv(backbone)
        if inner is None:
            raise ImagerecError(
                f"backbone of {model.name!r} has no Conv2D layer; Grad-CAM needs a convolutional model"
            )
        node = backbone._inbound_nodes[0]  # where the outer model calls the backbone
        self.layer_name = f"backbone/{inner.name}"
        head_out = score_layer.output if score_layer is not None else model.output
        self._parts = [
            keras.Model(model.inputs, node.input_tensors[0]),
            keras.Model(backbone.inputs, [inner.output, backbone.output]),
            keras.Model(node.output_tensors[0], head_out),
        ]

    def _forward(self, x):
        if len(self._parts) == 1:
            return self._parts[0](x, training=False)
        pre, mid, head = self._parts
        conv, feats = mid(pre(x, training=False), training=False)
        return conv, head(feats, training=False)

    def __call__(self, images: np.ndarray, classes: np.ndarray | None = None) -> np.ndarray:
        """Heatmaps for ``images`` (uint8 N x S x S x C) towards ``classes`` (default: the predicted class)."""
        import tensorflow as tf

        x = tf.convert_to_tensor(np.asarray(images, dtype=np.float32))
        with tf.GradientTape() as tape:
            conv, scores = self._forward(x)
            tape.watch(conv)
            idx = tf.argmax(scores, axis=1) if classes is None else tf.constant(np.asarray(classes), tf.int64)
            picked = tf.gather(scores, idx, axis=1, batch_dims=1)
        grads = tape.gradient(picked, conv)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * conv, axis=-1))[..., None]
        cam = tf.image.resize(cam, images.shape[1:3], method="bilinear")[..., 0].numpy()
        peak = cam.reshape(len(cam), -1).max(axis=1)[:, None, None]
        return np.divide(cam, peak, out=np.zeros_like(cam), where=peak > 0).astype(np.float32)


def _find(model, name: str):
    try:
        return model.get_layer(name)
    except ValueError:
        return None


def explain(clf, image, out: str | Path, class_name: str | None = None) -> dict:
    """Write a Grad-CAM picture for one ``image`` (path or bytes) seen by ``clf`` to ``out`` (PNG).

    Args:
        clf: a loaded :class:`imagerec.Classifier` (Keras runtime).
        image: the image to explain (anything ``Classifier.preprocess`` accepts).
        out: where to write the PNG (original | heatmap overlay).
        class_name: explain this class instead of the predicted one.

    Returns:
        ``{"label", "confidence", "explained", "layer", "out"}``.

    Example:
        >>> imagerec.Classifier.load("runs/fmnist").explain("shoe.png", "heat.png")["label"]
    """
    from imagerec.evaluation.data import require_classifier
    from imagerec.evaluation.plots import image_grid_png

    require_classifier(clf, "explain")
    if clf.model is None:
        raise ImagerecError("Grad-CAM needs the Keras model; load the run with runtime='keras'")
    x = clf.preprocess(image)[None]
    probs = clf.predict_proba(x)[0]
    target = int(probs.argmax())
    if class_name is not None:
        if class_name not in clf.labels:
            raise ImagerecError(f"class {class_name!r} is not one of the run's classes {clf.labels}")
        target = clf.labels.index(class_name)
    cam = GradCAM(clf.model)
    heat = cam(x, np.array([target]))[0]
    pred = clf.labels[int(probs.argmax())]
    captions = [
        f"input\npred: {pred} ({probs.max():.2f})",
        f"Grad-CAM: {clf.labels[target]}\n({cam.layer_name})",
    ]
    path = image_grid_png([x[0], x[0]], captions, out, heatmaps=[None, heat])
    return {
        "label": pred,
        "confidence": float(probs.max()),
        "explained": clf.labels[target],
        "layer": cam.layer_name,
        "out": str(path),
    }
