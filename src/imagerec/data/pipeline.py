"""The tf.data input pipeline, fed from the split manifest.

Decoding uses :func:`imagerec.data.images.load_image` (the same function serving uses), in parallel
(:func:`imagerec.data.parallel.worker_pool`), once: the decoded ``uint8`` tensors are cached in memory (or in a ``.npy`` file on disk for
``cache="disk"``, reused across runs) and every epoch after that is a shuffle, batch, augment and prefetch.
``cache="none"`` streams: each epoch decodes again (for datasets larger than memory).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from imagerec.data.images import fit_size, load_image, to_array
from imagerec.data.parallel import default_workers, worker_pool
from imagerec.data.split import ManifestRow

MEMORY_LIMIT_BYTES = 4 << 30


@dataclass(frozen=True)
class PipelineSpec:
    image_size: int
    channels: int
    resize: str = "stretch"
    batch_size: int = 128
    cache: str = "memory"  # memory | disk | none
    deterministic: bool = False


def _decode_chunk(args: tuple[list[str], int, int, str]) -> np.ndarray:
    paths, size, channels, resize = args
    out = np.empty((len(paths), size, size, channels), dtype=np.uint8)
    for i, path in enumerate(paths):
        out[i] = load_image(path, (size, size), channels, resize)
    return out


def decode_all(
    paths: list[str], spec: PipelineSpec, workers: int | None = None, decoded: dict | None = None
) -> np.ndarray:
    """Decode ``paths`` into one ``uint8`` array ``(N, S, S, C)`` in parallel (see :func:`imagerec.data.parallel.worker_pool`).

    ``decoded`` maps paths to the pixels the scan already decoded (``ScanResult.decoded``): those are only resized,
    with the same :func:`fit_size` and :func:`to_array` that :func:`load_image` applies, so the tensor is identical.
    """
    workers = workers or default_workers()
    if decoded:
        size = (spec.image_size, spec.image_size)
        out = np.empty((len(paths), spec.image_size, spec.image_size, spec.channels), dtype=np.uint8)
        todo = []
        for i, path in enumerate(paths):
            pixels = decoded.get(path)
            if pixels is None:
                todo.append(i)
            elif pixels.shape[:2] == size and (pixels.ndim == 2) == (spec.channels == 1):
                out[i] = pixels.reshape(out.shape[1:])  # already the model's size and channels
            else:
                out[i] = to_array(fit_size(Image.fromarray(pixels), size, spec.resize), spec.channels)
        if todo:
            out[todo] = decode_all([paths[i] for i in todo], spec, workers)
        return out
    if len(paths) < 512 or workers == 1:
        return _decode_chunk((paths, spec.image_size, spec.channels, spec.resize))
    step = max(128, min(1024, len(paths) // (workers * 4)))
    jobs = [
        (paths[i : i + step], spec.image_size, spec.channels, spec.resize) for i in range(0, len(paths), step)
    ]
    with worker_pool(workers) as pool:
        return np.concatenate(list(pool.map(_decode_chunk, jobs)))


def cache_key(rows: list[ManifestRow], spec: PipelineSpec) -> str:
    digest = hashlib.sha256(f"{spec.image_size}|{spec.channels}|{spec.resize}".encode())
    for r in rows:
        digest.update(f"{r.path}|{r.sha256}\n".encode())
    return digest.hexdigest()[:24]


def label_array(rows: list[ManifestRow], class_names: list[str]) -> np.ndarray:
    """The targets of ``rows``: ``int32 (N,)`` class indices, or for multi-label rows ``float32 (N, K)`` multi-hot."""
    index = {name: i for i, name in enumerate(class_names)}
    if not any(r.multilabel for r in rows):
        return np.array([index[r.label] for r in rows], dtype=np.int32)
    hot = np.zeros((len(rows), len(class_names)), dtype=np.float32)
    for i, r in enumerate(rows):
        hot[i, [index[name] for name in r.labels]] = 1.0
    return hot


def load_arrays(
    rows: list[ManifestRow], class_names: list[str], spec: PipelineSpec, decoded: dict | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Decoded images and their targets (see :func:`label_array`) for ``rows`` (uses the on-disk cache when
    ``spec.cache == 'disk'``).

    ``decoded``: images the scan kept (``ScanResult.decoded``), used instead of decoding those files again.
    """
    labels = label_array(rows, class_names)
    if spec.cache == "disk":
        from imagerec.data.builtin import cache_root

        path = cache_root() / "arrays" / f"{cache_key(rows, spec)}.npy"
        if path.exists():
            return np.load(path, mmap_mode="r", allow_pickle=False), labels
        images = decode_all([r.path for r in rows], spec, decoded=decoded)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, images, allow_pickle=False)
        os.replace(tmp, path)
        return images, labels
    return decode_all([r.path for r in rows], spec, decoded=decoded), labels


def make_dataset(
    rows: list[ManifestRow],
    class_names: list[str],
    spec: PipelineSpec,
    training: bool = False,
    augment=None,
    seed: int = 42,
    arrays: tuple[np.ndarray, np.ndarray] | None = None,
):
    """A ``tf.data.Dataset`` of ``(float32 images 0..255, int32 labels)`` batches (multi-label rows: ``float32``
    multi-hot targets, see :func:`label_array`).

    Args:
        rows: manifest rows of one split.
        class_names: the label order.
        spec: image size, channels, resize policy, batch size, cache mode.
        training: shuffle every epoch and apply ``augment``.
        augment: a batch function from :func:`imagerec.data.augment.build_augment`, or None.
        seed: seeds the shuffle and the per-batch augmentation keys (same seed, same epochs).
        arrays: already decoded ``(images, labels)`` (skips decoding).
    """
    import tensorflow as tf

    n_calls = parallel_calls()
    if spec.cache == "none" and arrays is None:
        ds = _streaming_dataset(rows, class_names, spec, training, seed)
    else:
        images, labels = arrays if arrays is not None else load_arrays(rows, class_names, spec)
        # Shuffle indices, not images: a full-size shuffle (exact, every epoch) of int64 scalars, then one gather
        # per batch. Shuffling (image, label) elements in a 50k buffer sliced and copied every image one by one:
        # 0.33 s of pipeline CPU per Fashion-MNIST epoch against 0.25 s now, first batch 170 -> 90 ms. (The 9-10 s
        # epoch-start stalls were the autotuner, not the buffer: see dataset_options.)
        images_t, labels_t = tf.constant(images), tf.constant(labels)
        ds = tf.data.Dataset.range(len(labels))
        if training:
            ds = ds.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
        ds = ds.batch(spec.batch_size, drop_remainder=False).map(
            lambda idx: (tf.gather(images_t, idx), tf.gather(labels_t, idx))
        )  # sequential map: in order by construction
    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=n_calls, deterministic=True)
    if training and augment is not None:
        # One stateless key per batch position from a seeded stream: the same seed repeats every augmented epoch even
        # though batches are augmented in parallel (stateful random ops would not). The stream restarts each epoch,
        # but the shuffle puts other images at each position, so an image is augmented differently every epoch.
        keys = tf.data.Dataset.random(seed=seed).batch(2, drop_remainder=True)
        ds = tf.data.Dataset.zip((ds, keys)).map(
            lambda xy, key: (augment(xy[0], key=key), xy[1]),
            num_parallel_calls=n_calls,
            deterministic=spec.deterministic,
        )
    return ds.with_options(dataset_options(spec.deterministic or not training)).prefetch(PREFETCH_BATCHES)


#: Batches prepared ahead of the model (fixed: see :func:`dataset_options`).
PREFETCH_BATCHES = 2


def parallel_calls() -> int:
    """Fixed ``map`` parallelism: one call per core (autotuning is off, see :func:`dataset_options`)."""
    return max(1, os.cpu_count() or 1)


def dataset_options(deterministic: bool):
    """``tf.data.Options`` for every imagerec pipeline: autotuning off, fixed parallelism and prefetch instead.

    With autotuning on, destroying an iterator (Keras makes a new one every epoch, and one per validation pass)
    waits for the autotuner's thread to wake from its sleep, which grows to 10 s (TF 2.21). On the 2-core box
    that stalled the first batch of 1 epoch in 4 by 9-10 s (seen under gdb: the main thread in
    ``RootDataset::Iterator::~Iterator`` waiting on ``Model::OptimizeLoop``). These pipelines are a gather, a
    cast and a flip per batch: one call per core and two batches ahead keep the model fed without tuning.
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.deterministic = deterministic
    options.autotune.enabled = False
    return options


def _streaming_dataset(rows, class_names, spec: PipelineSpec, training: bool, seed: int):
    import tensorflow as tf

    paths = [r.path for r in rows]
    labels = label_array(rows, class_names)
    shape = (spec.image_size, spec.image_size, spec.channels)

    def _load(path):
        return load_image(
            path.decode() if isinstance(path, bytes) else str(path), shape[:2], spec.channels, spec.resize
        )

    ds = tf.data.Dataset.from_tensor_slices((paths, labels))
    if training:
        ds = ds.shuffle(min(len(paths), 50_000), seed=seed, reshuffle_each_iteration=True)

    def _map(path, label):
        img = tf.numpy_function(_load, [path], tf.uint8)
        img.set_shape(shape)
        return img, label

    ds = ds.map(_map, num_parallel_calls=parallel_calls(), deterministic=spec.deterministic or not training)
    return ds.batch(spec.batch_size)


def dataset_bytes(n: int, spec: PipelineSpec) -> int:
    return n * spec.image_size * spec.image_size * spec.channels


def choose_cache(requested: str, n: int, spec: PipelineSpec) -> str:
    if requested != "auto":
        return requested
    return "memory" if dataset_bytes(n, spec) <= MEMORY_LIMIT_BYTES else "none"


__all__ = ["PipelineSpec", "make_dataset", "load_arrays", "decode_all", "choose_cache", "Path"]
