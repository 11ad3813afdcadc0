"""Grad-CAM (Selvaraju et al., 2017): where in the image the model looked for the class it answered.

The heatmap is ``ReLU(sum_c w_c * A_c)`` over the channels ``A_c`` of the model's last spatial feature map, with
``w_c`` the spatial mean of the gradient of the class score (the pre-softmax ``logits`` layer: the probability
saturates near 1 and its gradient vanishes) with respect to ``A_c``. The map is divided by its peak.

Which map: the output of the last convolution's *block* (the last layer after it with the same height and width:
its BatchNorm and activation, a residual add), not the raw convolution. A ``Conv2D -> BatchNorm -> ReLU`` block's
raw convolution is centred and scaled by the BatchNorm that follows, so its weighted sum is often negative
everywhere and the ReLU'd map is blank. Where that map is smaller than ``MIN_SIDE`` cells (a backbone at a small
image size ends on 1x1 or 2x2), an earlier block output with at least ``MIN_SIDE`` cells is used instead.

For transfer-learning models the map sits inside the nested ``backbone`` model: the model is split into the
layers before the backbone, the backbone (with the chosen map as a second output) and the head after it, so that
one ``tf.GradientTape`` sees the whole path. A ``mixed_bfloat16`` model is rebuilt in float32 first (bf16 keeps 8
bits of mantissa: averaged gradients and weighted sums of small values lose what Grad-CAM needs).

When a map cannot show a location (all gradients zero, nothing positive, the same value everywhere) the reason is
reported in one line (``GradCAM.maps`` notes, ``explain(...)["note"]``) instead of a silent flat overlay.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from imagerec.errors import ImagerecError

MIN_SIDE = 4  # a map with fewer cells a side upsamples to a blob, not to a place
FLAT = 0.05  # a map whose (max - min) is under this fraction of its peak shows no place


def _hw(layer) -> tuple[int, int] | None:
    """The (height, width) of a layer's 4-D output, or None (not a spatial map, or a layer called twice)."""
    try:
        shape = layer.output.shape
    except (AttributeError, ValueError):
        return None
    if len(shape) != 4 or shape[1] is None or shape[2] is None:
        return None
    return int(shape[1]), int(shape[2])


def _feature_layer(model):
    """The layer whose output Grad-CAM weighs (see the module docstring), or None without a convolution."""
    from keras import layers

    convs = (layers.Conv2D, layers.DepthwiseConv2D, layers.SeparableConv2D)
    found = [i for i, layer in enumerate(model.layers) if isinstance(layer, convs)]
    if not found:
        return None
    seq = model.layers
    hw = _hw(seq[found[-1]])
    pick = max(i for i in range(found[-1], len(seq)) if _hw(seq[i]) == hw)
    if min(hw) < MIN_SIDE:
        blocks = (*convs, layers.Activation, layers.ReLU, layers.Add, layers.BatchNormalization)
        cuts = _cuts(model)
        larger = [
            i
            for i in range(pick)
            if cuts[i] and isinstance(seq[i], blocks) and min(_hw(seq[i]) or (0,)) >= MIN_SIDE
        ]
        pick = larger[-1] if larger else pick
    return seq[pick]


def _cuts(model) -> list[bool]:
    """Per layer: does everything after it see the image only through it (not a residual or squeeze branch)?"""
    seq = model.layers
    where = {id(layer): i for i, layer in enumerate(seq)}
    earliest = [
        min(
            (where.get(id(parent.operation), i) for n in layer._inbound_nodes for parent in n.parent_nodes),
            default=i,
        )
        for i, layer in enumerate(seq)
    ]
    later = [len(seq)] * (len(seq) + 1)
    for i in range(len(seq) - 1, -1, -1):
        later[i] = min(earliest[i], later[i + 1])
    return [later[i + 1] >= i for i in range(len(seq))]


def _score(model):
    """The class-score tensor: the ``logits`` layer, else the input of a final softmax, else the output."""
    try:
        return model.get_layer("logits").output
    except ValueError:
        pass
    last = model.layers[-1]
    if getattr(getattr(last, "activation", None), "__name__", "") == "softmax":
        return last.input
    return model.output


class GradCAM:
    """A callable ``(uint8 batch, class indices or None) -> heatmaps (N, S, S) in 0..1`` for one Keras model.

    ``layer_name`` names the map it weighs, ``map_size`` its (rows, columns); :meth:`maps` also says, per image,
    why a map shows no place.
    """

    def __init__(self, model):
        import keras

        from imagerec.export.exporter import float32_model
        from imagerec.models.backbones import get_backbone_layer

        model = float32_model(model)
        self.model = model
        backbone = get_backbone_layer(model)
        feature = _feature_layer(model)
        if feature is not None or backbone is None:
            if feature is None:
                raise ImagerecError(
                    f"model {model.name!r} has no Conv2D layer; Grad-CAM needs a convolutional model"
                )
            self.layer_name, self.map_size = feature.name, _hw(feature)
            self._parts = [keras.Model(model.inputs, [feature.output, _score(model)])]
            return
        inner = _feature_layer(backbone)
        if inner is None:
            raise ImagerecError(
                f"backbone of {model.name!r} has no Conv2D layer; Grad-CAM needs a convolutional model"
            )
        node = backbone._inbound_nodes[0]  # where the outer model calls the backbone
        self.layer_name, self.map_size = f"backbone/{inner.name}", _hw(inner)
        self._parts = [
            keras.Model(model.inputs, node.input_tensors[0]),
            keras.Model(backbone.inputs, [inner.output, backbone.output]),
            keras.Model(node.output_tensors[0], _score(model)),
        ]

    def _forward(self, x):
        if len(self._parts) == 1:
            return self._parts[0](x, training=False)
        pre, mid, head = self._parts
        conv, feats = mid(pre(x, training=False), training=False)
        return conv, head(feats, training=False)

    def __call__(self, images: np.ndarray, classes: np.ndarray | None = None) -> np.ndarray:
        """Heatmaps for ``images`` (uint8 N x S x S x C) towards ``classes`` (default: the predicted class)."""
        return self.maps(images, classes)[0]

    def maps(
        self, images: np.ndarray, classes: np.ndarray | None = None
    ) -> tuple[np.ndarray, list[str | None]]:
        """``(heatmaps (N, S, S) in 0..1, notes)``: ``notes[i]`` is None, or one line on why map ``i`` shows no place."""
        import tensorflow as tf

        x = tf.convert_to_tensor(np.asarray(images, dtype=np.float32))
        with tf.GradientTape() as tape:
            conv, scores = self._forward(x)
            tape.watch(conv)
            idx = tf.argmax(scores, axis=1) if classes is None else tf.constant(np.asarray(classes), tf.int64)
            picked = tf.gather(scores, idx, axis=1, batch_dims=1)
        grads = tape.gradient(picked, conv)
        grads = tf.zeros_like(conv) if grads is None else grads
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        raw = tf.reduce_sum(weights * conv, axis=-1).numpy()
        cam = tf.image.resize(np.maximum(raw, 0)[..., None], images.shape[1:3], method="bilinear")[..., 0]
        cam = cam.numpy()
        peak = cam.reshape(len(cam), -1).max(axis=1)[:, None, None]
        heat = np.divide(cam, peak, out=np.zeros_like(cam), where=peak > 0).astype(np.float32)
        zero_grads = ~tf.reduce_any(grads != 0, axis=(1, 2, 3)).numpy()
        notes = [self._note(r, bool(z)) for r, z in zip(raw, zero_grads, strict=True)]
        return heat, notes

    def _note(self, raw: np.ndarray, zero_grads: bool) -> str | None:
        where = f"layer {self.layer_name} ({raw.shape[0]}x{raw.shape[1]})"
        if zero_grads:
            return (
                f"Grad-CAM is blank: the class score does not change with {where} for this image "
                "(all gradients are zero: a saturated or dead path)"
            )
        if raw.max() <= 0:
            return (
                f"Grad-CAM is blank: no place in {where} raises the class score (the weighted map is <= 0 "
                "everywhere: the evidence is spread out, or speaks against this class)"
            )
        if raw.size == 1 or raw.max() - max(raw.min(), 0) < FLAT * raw.max():
            return (
                f"Grad-CAM is flat: {where} weighs every place about the same (max-min under {FLAT:.0%} of the "
                "peak), so it cannot say where; the evidence is spread over the whole image"
            )
        return None


def explain(clf, image, out: str | Path, class_name: str | None = None) -> dict:
    """Write a Grad-CAM picture for one ``image`` (path or bytes) seen by ``clf`` to ``out`` (PNG).

    Args:
        clf: a loaded :class:`imagerec.Classifier` (Keras runtime).
        image: the image to explain (anything ``Classifier.preprocess`` accepts).
        out: where to write the PNG (original | heatmap overlay).
        class_name: explain this class instead of the predicted one.

    Returns:
        ``{"label", "confidence", "explained", "layer", "out", "note"}``; ``note`` is None, or one line saying
        why the map shows no place (then the PNG shows no overlay, or a flat one, with the reason as caption).

    Example:
        >>> imagerec.Classifier.load("runs/fmnist").explain("shoe.png", "heat.png")["label"]
    """
    from imagerec.evaluation.data import require_classifier
    from imagerec.evaluation.plots import image_grid_png

    require_classifier(clf, "explain")
    model = clf.keras_model()
    if model is None:
        raise ImagerecError(
            "Grad-CAM needs the run's Keras model; explain a run directory, not an exported artifact"
        )
    x = clf.preprocess(image)[None]
    probs = clf.predict_proba(x)[0]
    target = int(probs.argmax())
    if class_name is not None:
        if class_name not in clf.labels:
            raise ImagerecError(f"class {class_name!r} is not one of the run's classes {clf.labels}")
        target = clf.labels.index(class_name)
    cam = GradCAM(model)
    heats, notes = cam.maps(x, np.array([target]))
    heat, note = heats[0], notes[0]
    pred = clf.labels[int(probs.argmax())]
    caption = f"Grad-CAM: {clf.labels[target]}\n({cam.layer_name})"
    if note is not None:
        caption += "\n" + note.split(":")[0]
    captions = [f"input\npred: {pred} ({probs.max():.2f})", caption]
    blank = note is not None and heat.max() <= 0
    path = image_grid_png([x[0], x[0]], captions, out, heatmaps=[None, None if blank else heat])
    return {
        "label": pred,
        "confidence": float(probs.max()),
        "explained": clf.labels[target],
        "layer": cam.layer_name,
        "out": str(path),
        "note": note,
    }
