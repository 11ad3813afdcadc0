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


def _conv(x, filters, side: int, bn_max_side: int, momentum: float, strides: int = 1):
    """Conv 3x3 + ReLU; with BatchNorm only where the map is small.

    On a CPU, BatchNorm on a full-resolution map costs more than the convolution itself (it is memory-bound:
    measured 2.7x slower training for a 28x28 net on 2 cores), while on the small maps of the later stages it
    is cheap and still gives its conditioning benefit.
    """
    from keras import layers

    if side > bn_max_side:
        return layers.Conv2D(filters, 3, strides=strides, padding="same", activation="relu")(x)
    x = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization(momentum=momentum)(x)
    return layers.ReLU()(x)


def _stem(image_size: int, channels: int, momentum: float):
    """Inputs, rescaling, and stride-2 conv stems down to at most 32 px: ``(inputs, x, side)``."""
    from keras import layers

    inputs = _inputs(image_size, channels)
    x = layers.Rescaling(1.0 / 255)(inputs)
    side = image_size
    while side > 32:
        side = (side + 1) // 2
        x = _conv(x, 32, side, 0, momentum, strides=2)
    return inputs, x, side


def _flat_head(inputs, x, num_classes: int, units: int, dropout_in: float, dropout_out: float, name: str):
    """Flatten (keeps where things are), dropout, dense ``units``, dropout, logits, float32 softmax."""
    import keras
    from keras import layers

    x = layers.Flatten()(x)
    x = layers.Dropout(dropout_in)(x)
    x = layers.Dense(units, activation="relu")(x)
    x = layers.Dropout(dropout_out)(x)
    x = layers.Dense(num_classes, name="logits")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="probs")(x)
    return keras.Model(inputs, outputs, name=name)


@register_model(
    "imagerec-cnn",
    "imagerec default: conv 32 | pool | conv 32 | pool | conv 64 + BN, flatten, dense 512, dropout; "
    "stride-2 stems keep the trunk at <=32 px",
)
def imagerec_cnn(image_size, channels, num_classes, config):
    """A compact net designed for CPU training speed per accuracy point (the default).

    Three 3x3 convs, one per resolution (full, 1/2, 1/4 of the side, at most 32 px: larger inputs first pass
    through stride-2 conv stems), BatchNorm only on the last, smallest map (on a CPU, BatchNorm on a large map
    costs more than its convolution). The head flattens the final map (keeping where things are, which global
    pooling throws away: ~4 points on Fashion-MNIST) into a wide dense layer with dropout: dense FLOPs are the
    cheapest FLOPs on a CPU. On Fashion-MNIST at 28x28 in 10 epochs it reached 93.0-93.4% test accuracy (three
    seeds) at 9.1 MFLOPs per image, vs 93.0-93.1% at 13.9 MFLOPs and 2x the training time for
    ``imagerec-cnn-wide`` (bench/RESULTS-training.md).
    """
    from keras import layers

    momentum = getattr(config, "bn_momentum", None) or 0.9
    dropout = max(config.dropout, 0.25)
    inputs, x, side = _stem(image_size, channels, momentum)
    x = _conv(x, 32, side, 8, momentum)
    for filters in (32, 64):
        x = layers.MaxPooling2D()(x)
        side //= 2
        x = _conv(x, filters, side, 8, momentum)
    return _flat_head(inputs, x, num_classes, 512, dropout, dropout, "imagerec_cnn")


@register_model(
    "imagerec-cnn-wide",
    "conv 32 | 2x conv 32 | 2x conv 64 (BN on small maps), flatten, dense 128, dropout (the previous default)",
)
def imagerec_cnn_wide(image_size, channels, num_classes, config):
    """A compact VGG-style net: two convs per stage; 1.5x the FLOPs of ``imagerec-cnn``, about the same accuracy.

    The trunk runs at most at 32x32: larger inputs first pass through stride-2 conv stems. Stage one is a single
    plain conv at full resolution (cheap: few input channels), then a pool; stages two and three (two convs each,
    BatchNorm) run on 1/2 and 1/4 of the side. The head flattens the small final map (keeping where things are,
    which global pooling throws away; worth ~4 points on Fashion-MNIST) into a dense layer with dropout.
    """
    inputs, x = _vgg_trunk(image_size, channels, config)
    return _flat_head(
        inputs, x, num_classes, 128, max(config.dropout, 0.3), config.dropout, "imagerec_cnn_wide"
    )


def _vgg_trunk(image_size: int, channels: int, config):
    """conv 32 | pool | 2x conv 32 | pool | 2x conv 64, BatchNorm on maps <= 16 px: ``(inputs, x)``."""
    from keras import layers

    momentum = getattr(config, "bn_momentum", None) or 0.9
    inputs, x, side = _stem(image_size, channels, momentum)
    x = _conv(x, 32, side, 16, momentum)
    for filters in (32, 64):
        x = layers.MaxPooling2D()(x)
        side //= 2
        x = _conv(x, filters, side, 16, momentum)
        x = _conv(x, filters, side, 16, momentum)
    return inputs, x


@register_model(
    "imagerec-cnn-large",
    "imagerec-cnn-wide's convs with a dense-512 head: for long schedules (the 10-minute Fashion-MNIST recipe)",
)
def imagerec_cnn_large(image_size, channels, num_classes, config):
    """``imagerec-cnn-wide``'s trunk with ``imagerec-cnn``'s wide dense head (dense FLOPs are the cheapest on a CPU).

    Overfits short schedules less than it underfits them: meant for ~30 epochs with random erasing
    (``--augment hflip-erase``), see docs/training.md.
    """
    dropout = max(config.dropout, 0.3)
    inputs, x = _vgg_trunk(image_size, channels, config)
    return _flat_head(inputs, x, num_classes, 512, dropout, dropout, "imagerec_cnn_large")
