"""Transfer-learning backbones from ``keras.applications``: one row per network.

Each row records the input range the network expects; the conversion lives inside the built model
(``include_preprocessing`` where the application has it, a ``Rescaling`` layer otherwise), so callers always
feed float32 pixels in 0..255. Grey inputs are repeated to three channels inside the model.

The backbone is a nested model named ``backbone``, called with ``training=False`` so that its BatchNorm layers
stay in inference mode during fine-tuning.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from imagerec.errors import ImagerecError
from imagerec.models.registry import register_model


@dataclass(frozen=True)
class Backbone:
    name: str
    app: str  # attribute of keras.applications
    preprocessing: str  # "included" (0..255 in) or "minus1_1"
    min_size: int = 32
    default_size: int = 224


BACKBONES = (
    Backbone("mobilenetv3small", "MobileNetV3Small", "included"),
    Backbone("mobilenetv3large", "MobileNetV3Large", "included"),
    Backbone("efficientnetv2b0", "EfficientNetV2B0", "included"),
    Backbone("resnet50v2", "ResNet50V2", "minus1_1"),
)


def _make_backbone(row: Backbone, image_size: int, weights: str):
    import keras

    app = getattr(keras.applications, row.app)
    kwargs = {"include_top": False, "input_shape": (image_size, image_size, 3), "pooling": None}
    if row.preprocessing == "included":
        kwargs["include_preprocessing"] = True
    if weights == "imagenet":
        import socket

        # A bounded download: offline, a DNS failure is instant, but a black-holed route would hang urllib forever.
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(float(os.environ.get("IMAGEREC_DOWNLOAD_TIMEOUT", "20")))
        try:
            return app(weights="imagenet", **kwargs)
        except Exception as exc:  # noqa: BLE001 - offline download failures come in many types
            raise ImagerecError(
                f"cannot download ImageNet weights for {row.name} ({(str(exc).splitlines() or [type(exc).__name__])[0][:120]}); "
                "offline? pass a local file (--weights PATH/TO/backbone.weights.h5) or train from scratch (--weights none)"
            ) from None
        finally:
            socket.setdefaulttimeout(previous)
    model = app(weights=None, **kwargs)
    if weights not in ("none", "", None):
        if not os.path.isfile(weights) or not str(weights).endswith(".weights.h5"):
            raise ImagerecError(
                f"weights file {weights!r} not found; expected a .weights.h5 file, 'imagenet' or 'none'"
            )
        try:
            model.load_weights(weights)
        except Exception as exc:  # noqa: BLE001
            raise ImagerecError(
                f"weights file {weights!r} does not fit {row.name} at {image_size}px: {str(exc).splitlines()[0][:200]}"
            ) from None
    return model


def _builder(row: Backbone):
    def build(image_size, channels, num_classes, config):
        import keras
        from keras import layers

        inputs = keras.Input((image_size, image_size, channels), name="image")
        x = inputs
        if channels == 1:
            x = layers.Concatenate(name="grey_to_rgb")([x, x, x])
        if row.preprocessing == "minus1_1":
            x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="to_minus1_1")(x)
        backbone = _make_backbone(row, image_size, config.weights)
        backbone.name = "backbone"
        x = backbone(x, training=False)
        x = layers.GlobalAveragePooling2D()(x)
        x = layers.Dropout(config.dropout)(x)
        x = layers.Dense(num_classes, name="logits")(x)
        outputs = layers.Activation("softmax", dtype="float32", name="probs")(x)
        return keras.Model(inputs, outputs, name=row.name)

    return build


for _row in BACKBONES:
    register_model(
        _row.name,
        f"keras.applications.{_row.app} + GAP + dropout + dense (transfer learning)",
        kind="backbone",
        min_size=_row.min_size,
        default_size=_row.default_size,
        input_range="0..255 (included)" if _row.preprocessing == "included" else "[-1,1] via Rescaling",
    )(_builder(_row))


def get_backbone_layer(model):
    """The nested backbone model of a transfer-learning model, or None for from-scratch models."""
    try:
        return model.get_layer("backbone")
    except ValueError:
        return None
