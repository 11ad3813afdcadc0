"""From-scratch CNNs: the TensorFlow tutorial's baseline and imagerec's CPU-efficient default."""

from __future__ import annotations

from imagerec.models.registry import register_model


def _inputs(image_size: int, channels: int):
    import keras

    return keras.Input((image_size, image_size, channels), name="image")


@register_model("tutorial-cnn", "TensorFlow tutorial CNN: 3x(Conv+MaxPool) 16/32/64, Dense 128 (baseline)")
def tutorial_cnn(image_size, channels, num_classes, config):
    import keras
    from keras import layers

    inputs = _inputs(image_size, channels)
    x = layers.Rescaling(1.0 / 255)(inputs)
    for filters in (16, 32, 64):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(128, activation="relu")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="probs")(outputs)
    return keras.Model(inputs, outputs, name="tutorial_cnn")


def _conv_bn(x, filters, kernel=3, strides=1):
    from keras import layers

    x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization(momentum=0.9)(x)
    return layers.ReLU()(x)


@register_model(
    "imagerec-cnn",
    "imagerec default: BN-ReLU conv stages (32-64-128), stride-2 stem for large inputs, global pooling, dropout",
)
def imagerec_cnn(image_size, channels, num_classes, config):
    """A compact VGG-style net whose downsampling plan follows the input size.

    Inputs larger than 48 px get a stride-2 stem (and a second one past 112 px) so that the three conv stages
    always run on at most ~28x28 maps: FLOPs per image stay small whatever the image size.
    """
    import keras
    from keras import layers

    inputs = _inputs(image_size, channels)
    x = layers.Rescaling(1.0 / 255)(inputs)
    size = image_size
    stem = 32
    while size > 48:
        x = _conv_bn(x, stem, 3, strides=2)
        size = (size + 1) // 2
    widths = (32, 64, 128)
    for i, filters in enumerate(widths):
        x = _conv_bn(x, filters)
        x = _conv_bn(x, filters)
        if i < len(widths) - 1:
            x = layers.MaxPooling2D()(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(config.dropout)(x)
    x = layers.Dense(num_classes, name="logits")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="probs")(x)
    return keras.Model(inputs, outputs, name="imagerec_cnn")
