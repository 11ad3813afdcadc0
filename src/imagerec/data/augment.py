"""Augmentation presets (a registry: pick one by name), applied to uint8-valued float batches in tf.data.

Each preset is one row of ``PRESETS``. A batch goes through, in order: a random horizontal flip, one random affine
warp (translation, rotation and zoom composed into a single projective transform, so the image is resampled once,
not once per operation), contrast, brightness, then random erasing. All of it is plain tf ops inside the input
pipeline, never inside the model, so the saved model stays free of training-only layers. The ranges are those of
the Keras preprocessing layers (``RandomTranslation(0.1)`` = up to 10 % of the side, ``RandomRotation(0.05)`` =
up to 5 % of a turn, ``RandomZoom(0.1)`` = scale 0.9..1.1, ``RandomContrast``/``RandomBrightness`` with
``value_range=(0, 255)``); fusing the three warps made the ``default`` preset about 2x faster (docs/data.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    description: str
    flip: bool = False
    translate: float = 0.0  # fraction of the side
    rotate: float = 0.0  # fraction of a full turn
    zoom: float = 0.0  # scale in 1 +- zoom
    contrast: float = 0.0
    brightness: float = 0.0  # fraction of 255
    erase: float = 0.0  # probability of erasing one rectangle
    fill: str = "constant"  # constant (black) | reflect | nearest | wrap: pixels warped in from outside


PRESETS: dict[str, Preset] = {
    "none": Preset("no augmentation"),
    "light": Preset(
        "small translation and zoom (safe for digits and text: no flip)", translate=0.08, zoom=0.08
    ),
    "flip": Preset("horizontal flip + small translation (objects, clothes)", flip=True, translate=0.1),
    "hflip": Preset("horizontal flip only (cheapest; short schedules on large datasets)", flip=True),
    "hflip-erase": Preset(
        "horizontal flip + random erasing (regularises long schedules on small images)", flip=True, erase=0.5
    ),
    "default": Preset(
        "horizontal flip, translation, rotation, zoom, contrast",
        flip=True,
        translate=0.1,
        rotate=0.05,
        zoom=0.1,
        contrast=0.1,
        fill="reflect",
    ),  # fmt: skip
    "strong": Preset(
        "default + brightness + random erasing",
        flip=True,
        translate=0.1,
        rotate=0.05,
        zoom=0.1,
        contrast=0.1,
        brightness=0.1,
        erase=0.5,
        fill="reflect",
    ),  # fmt: skip
}
AUGMENT_PRESETS: dict[str, str] = {name: row.description for name, row in PRESETS.items()}


def augment_flips(preset: str) -> bool | None:
    """Whether ``preset`` mirrors images horizontally (None for an unknown or unresolved name)."""
    row = PRESETS.get(preset)
    return None if row is None else row.flip


def resolve_preset(preset: str, image_size: int, channels: int) -> str:
    """``auto`` -> a preset suited to the image size."""
    if preset == "auto":
        return "flip" if image_size <= 64 else "default"
    if preset not in AUGMENT_PRESETS:
        from imagerec.errors import ImagerecError, did_you_mean

        valid = ["auto", *AUGMENT_PRESETS]
        hint = did_you_mean(preset, valid) or f"; choose one of {', '.join(valid)}"
        raise ImagerecError(f"unknown augmentation preset {preset!r}{hint}")
    return preset


def _uniform(shape, minval: float, maxval: float, seed: int | None, key):
    """Stateless draws from ``key`` (a shape-[2] seed tensor) when given, else a stateful op seeded by ``seed``.

    The input pipeline passes a key per batch (see ``pipeline.make_dataset``): stateful random ops inside a
    parallel ``map`` hand out numbers in whatever order the batches arrive, so a seed would not repeat an epoch.
    """
    import tensorflow as tf

    if key is not None:
        return tf.random.stateless_uniform(shape, seed=key, minval=minval, maxval=maxval)
    return tf.random.uniform(shape, minval, maxval, seed=seed)


def random_erasing(images, rate: float = 0.5, max_area: float = 0.25, seed: int | None = None, key=None):
    """Erase one random rectangle per image (with probability ``rate``), filling it with mid-grey."""
    import tensorflow as tf

    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    hf, wf = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    draw = _uniform(
        [batch, 4], 0.0, 1.0, seed, key
    )  # one op: independent columns (one seed per op repeats draws)
    side = tf.sqrt(0.02 + draw[:, 0] * (max_area - 0.02))
    eh = tf.cast(side * hf, tf.int32)
    ew = tf.cast(side * wf, tf.int32)
    y0 = tf.cast(draw[:, 1] * tf.cast(height - eh + 1, tf.float32), tf.int32)
    x0 = tf.cast(draw[:, 2] * tf.cast(width - ew + 1, tf.float32), tf.int32)
    rows = tf.range(height)[None, :, None]
    cols = tf.range(width)[None, None, :]
    inside = (
        (rows >= y0[:, None, None])
        & (rows < (y0 + eh)[:, None, None])
        & (cols >= x0[:, None, None])
        & (cols < (x0 + ew)[:, None, None])
    )
    apply = draw[:, 3] < rate
    mask = tf.cast(inside & apply[:, None, None], images.dtype)[..., None]
    return images * (1 - mask) + 127.5 * mask


def random_affine(
    images, translate: float, rotate: float, zoom: float, fill: str = "constant", seed=None, key=None
):
    """One random translation + rotation + zoom per image, as a single bilinear projective warp."""
    import tensorflow as tf

    shape = tf.shape(images)
    batch = shape[0]
    height, width = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    draw = _uniform([batch, 4], -1.0, 1.0, seed, key)
    angle = draw[:, 0] * rotate * 2.0 * math.pi
    scale = 1.0 + draw[:, 1] * zoom
    tx, ty = draw[:, 2] * translate * width, draw[:, 3] * translate * height
    cx, cy = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    # output pixel (x, y) samples input s*R*((x, y) - c) + c + t
    a, b = scale * tf.cos(angle), scale * tf.sin(angle)
    zeros = tf.zeros_like(a)
    transforms = tf.stack(
        [a, -b, cx - a * cx + b * cy + tx, b, a, cy - b * cx - a * cy + ty, zeros, zeros], axis=1
    )
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=shape[1:3],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode=fill.upper(),
    )


def build_augment(preset: str, seed: int | None = None) -> Callable | None:
    """A function ``batch -> batch`` for tf.data ``map`` (float32 0..255 in and out), or None for ``none``."""
    import tensorflow as tf

    row = PRESETS[resolve_preset(preset, 0, 0)] if preset != "auto" else None
    if row is None:
        raise ValueError("resolve 'auto' with resolve_preset(preset, image_size, channels) first")
    if preset == "none":
        return None

    def augment(images, key=None):
        """``key``: a shape-[2] int seed tensor for stateless, repeatable draws (one per batch)."""
        if key is None and seed is not None:
            key = tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int64, seed=seed)
        keys = tf.random.experimental.stateless_split(key, 3) if key is not None else [None] * 3
        batch = tf.shape(images)[0]
        draw = _uniform([batch, 3], 0.0, 1.0, seed, keys[0])
        if row.flip:
            images = tf.where((draw[:, 0] < 0.5)[:, None, None, None], tf.reverse(images, axis=[2]), images)
        if row.translate or row.rotate or row.zoom:
            images = random_affine(images, row.translate, row.rotate, row.zoom, row.fill, seed, keys[1])
        if row.contrast:
            factor = (1.0 + (draw[:, 1] * 2.0 - 1.0) * row.contrast)[:, None, None, None]
            mean = tf.reduce_mean(images, axis=[1, 2], keepdims=True)
            images = tf.clip_by_value((images - mean) * factor + mean, 0.0, 255.0)
        if row.brightness:
            delta = ((draw[:, 2] * 2.0 - 1.0) * row.brightness * 255.0)[:, None, None, None]
            images = tf.clip_by_value(images + delta, 0.0, 255.0)
        if row.erase:
            images = random_erasing(images, rate=row.erase, seed=seed, key=keys[2])
        return images

    return augment
