"""Augmentation presets (a registry: pick one by name), applied to uint8-valued float batches in tf.data.

Every preset is a list of Keras preprocessing layers plus optional random erasing, run on batches inside the
input pipeline (not inside the model), so the saved model stays free of training-only layers.
"""

from __future__ import annotations

from collections.abc import Callable

AUGMENT_PRESETS: dict[str, str] = {
    "none": "no augmentation",
    "light": "small translation and zoom (safe for digits and text: no flip)",
    "flip": "horizontal flip + small translation (objects, clothes)",
    "hflip": "horizontal flip only (cheapest; short schedules on large datasets)",
    "default": "horizontal flip, translation, rotation, zoom, contrast",
    "strong": "default + brightness + random erasing",
}


def resolve_preset(preset: str, image_size: int, channels: int) -> str:
    """``auto`` -> a preset suited to the image size."""
    if preset == "auto":
        return "flip" if image_size <= 64 else "default"
    if preset not in AUGMENT_PRESETS:
        raise ValueError(
            f"unknown augmentation preset {preset!r}; choose one of auto, {', '.join(AUGMENT_PRESETS)}"
        )
    return preset


def random_erasing(images, rate: float = 0.5, max_area: float = 0.25, seed: int | None = None):
    """Erase one random rectangle per image (with probability ``rate``), filling it with mid-grey."""
    import tensorflow as tf

    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    hf, wf = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    side = tf.sqrt(tf.random.uniform([batch], 0.02, max_area, seed=seed))
    eh = tf.cast(side * hf, tf.int32)
    ew = tf.cast(side * wf, tf.int32)
    y0 = tf.cast(tf.random.uniform([batch], 0, 1, seed=seed) * tf.cast(height - eh + 1, tf.float32), tf.int32)
    x0 = tf.cast(tf.random.uniform([batch], 0, 1, seed=seed) * tf.cast(width - ew + 1, tf.float32), tf.int32)
    rows = tf.range(height)[None, :, None]
    cols = tf.range(width)[None, None, :]
    inside = (
        (rows >= y0[:, None, None])
        & (rows < (y0 + eh)[:, None, None])
        & (cols >= x0[:, None, None])
        & (cols < (x0 + ew)[:, None, None])
    )
    apply = tf.random.uniform([batch], seed=seed) < rate
    mask = tf.cast(inside & apply[:, None, None], images.dtype)[..., None]
    return images * (1 - mask) + 127.5 * mask


def build_augment(preset: str, seed: int | None = None) -> Callable | None:
    """A function ``batch -> batch`` for tf.data ``map``, or None for ``none``."""
    from keras import layers

    if preset == "none":
        return None
    stack: list = []
    if preset in ("flip", "hflip", "default", "strong"):
        stack.append(layers.RandomFlip("horizontal", seed=seed))
    if preset == "light":
        stack += [
            layers.RandomTranslation(0.08, 0.08, fill_mode="constant", seed=seed),
            layers.RandomZoom(0.08, seed=seed),
        ]
    if preset == "flip":
        stack.append(layers.RandomTranslation(0.1, 0.1, fill_mode="constant", seed=seed))
    if preset in ("default", "strong"):
        stack += [
            layers.RandomTranslation(0.1, 0.1, fill_mode="reflect", seed=seed),
            layers.RandomRotation(0.05, fill_mode="reflect", seed=seed),
            layers.RandomZoom(0.1, fill_mode="reflect", seed=seed),
            layers.RandomContrast(0.1, value_range=(0, 255), seed=seed),
        ]
    if preset == "strong":
        stack.append(layers.RandomBrightness(0.1, value_range=(0, 255), seed=seed))

    def augment(images):
        for layer in stack:
            images = layer(images, training=True)
        if preset == "strong":
            images = random_erasing(images, seed=seed)
        return images

    return augment
