"""The tf.data input pipeline from the manifest: decode, resize, cache, batching, determinism, augmentation."""

from __future__ import annotations

from pathlib import Path

import imagefactory as f
import numpy as np
import pytest

from imagerec.data.augment import AUGMENT_PRESETS, build_augment, resolve_preset
from imagerec.data.images import load_image
from imagerec.data.pipeline import PipelineSpec, choose_cache, decode_all, load_arrays, make_dataset
from imagerec.data.split import ManifestRow
from imagerec.errors import ImagerecError

CLASSES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> list[ManifestRow]:
    """30 mixed-format, non-square images in 3 classes."""
    root = tmp_path_factory.mktemp("pipe")
    out = []
    for i in range(30):
        label = CLASSES[i % 3]
        arr = f.picture(i, 48)[:, : 32 + i % 16]  # widths 32..47: the resize policy matters
        ext, fmt = [("png", "PNG"), ("jpg", "JPEG"), ("bmp", "BMP")][i % 3]
        path = f.write(root / label / f"{i:02d}.{ext}", f.encode(arr, fmt))
        out.append(ManifestRow(str(path), label, "train", f"{i:064x}"))
    return out


def test_load_arrays_is_load_image_of_every_row(rows):
    spec = PipelineSpec(image_size=24, channels=3, resize="pad")
    images, labels = load_arrays(rows, CLASSES, spec)
    assert images.shape == (30, 24, 24, 3) and images.dtype == np.uint8
    assert labels.tolist() == [i % 3 for i in range(30)]
    for k in (0, 7, 29):
        assert np.array_equal(images[k], load_image(rows[k].path, (24, 24), 3, "pad"))


@pytest.mark.parametrize("resize", ["stretch", "pad", "crop"])
@pytest.mark.parametrize("channels", [1, 3])
def test_arrays_from_the_scans_decoded_images_equal_a_fresh_decode(rows, resize: str, channels: int):
    """Training builds its arrays from the images the scan kept (one decode pass): same tensors, to the bit."""
    from imagerec.data.scan import KEEP_MAX_PIXELS, scan_dataset

    root = Path(rows[0].path).parent.parent
    result = scan_dataset(root, workers=1, keep_decoded=True)
    assert set(result.decoded) == {r.path for r in rows}  # 48 x <= 47 px: all under KEEP_MAX_PIXELS
    assert all(p.shape[0] * p.shape[1] <= KEEP_MAX_PIXELS for p in result.decoded.values())
    spec = PipelineSpec(20, channels, resize)
    kept, _ = load_arrays(rows, CLASSES, spec, decoded=result.decoded)
    fresh, _ = load_arrays(rows, CLASSES, spec)
    assert np.array_equal(kept, fresh)
    partial = {r.path: result.decoded[r.path] for r in rows[::2]}  # the rest decoded from the files
    assert np.array_equal(load_arrays(rows, CLASSES, spec, decoded=partial)[0], fresh)
    assert scan_dataset(root, workers=1).decoded == {}  # only kept on request


@pytest.mark.parametrize("resize", ["stretch", "pad", "crop"])
@pytest.mark.parametrize("channels", [1, 3])
def test_resize_policies_and_channels(rows, resize: str, channels: int):
    images, _ = load_arrays(rows[:4], CLASSES, PipelineSpec(16, channels, resize))
    assert images.shape == (4, 16, 16, channels)
    if resize == "pad":  # a portrait image padded to a square has white side bars
        assert (images[1][:, 0] == 255).all() and not (images[1][:, 8] == 255).all()


def test_disk_cache_is_reused_and_keyed_on_the_spec(rows, imagerec_home: Path):
    spec = PipelineSpec(20, 3, cache="disk")
    first, labels = load_arrays(rows, CLASSES, spec)
    files = sorted((imagerec_home / "arrays").glob("*.npy"))
    assert len(files) >= 1
    again, _ = load_arrays(rows, CLASSES, spec)
    assert isinstance(again, np.memmap) and np.array_equal(np.asarray(again), first)
    load_arrays(rows, CLASSES, PipelineSpec(20, 1, cache="disk"))
    assert len(sorted((imagerec_home / "arrays").glob("*.npy"))) == len(files) + 1


def _collect(ds) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds], strict=True)
    return np.concatenate(xs), np.concatenate(ys)


def test_streaming_and_cached_pipelines_give_the_same_batches(rows):
    memory = PipelineSpec(16, 3, batch_size=8, cache="memory")
    stream = PipelineSpec(16, 3, batch_size=8, cache="none")
    x_mem, y_mem = _collect(make_dataset(rows, CLASSES, memory))
    x_str, y_str = _collect(make_dataset(rows, CLASSES, stream))
    assert x_mem.dtype == np.float32 and x_mem.shape == (30, 16, 16, 3)
    assert np.array_equal(x_mem, x_str) and np.array_equal(y_mem, y_str)
    batches = [int(y.shape[0]) for _, y in make_dataset(rows, CLASSES, memory)]
    assert batches == [8, 8, 8, 6]


@pytest.mark.parametrize("cache", ["memory", "none"])
def test_deterministic_training_order_follows_the_seed(rows, cache: str):
    spec = PipelineSpec(8, 1, batch_size=30, cache=cache, deterministic=True)
    order = [
        _collect(make_dataset(rows, CLASSES, spec, training=True, seed=s))[1].tolist() for s in (1, 1, 2)
    ]
    assert order[0] == order[1]
    assert order[0] != order[2]
    assert sorted(order[0]) == sorted(i % 3 for i in range(30))


@pytest.mark.parametrize("preset", sorted(AUGMENT_PRESETS))
def test_every_augmentation_preset_keeps_shape_and_range(rows, preset: str):
    import tensorflow as tf

    augment = build_augment(preset, seed=0)
    if preset == "none":
        assert augment is None
        return
    spec = PipelineSpec(32, 3, batch_size=30)
    images, labels = load_arrays(rows, CLASSES, spec)
    batch = tf.constant(images, tf.float32)
    out = augment(batch).numpy()
    assert out.shape == batch.shape and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= -1e-3 and out.max() <= 255 + 1e-3
    assert not np.array_equal(out, images.astype(np.float32))  # it does something
    x, y = _collect(
        make_dataset(None, CLASSES, spec, training=True, augment=augment, arrays=(images, labels))
    )
    assert x.shape == (30, 32, 32, 3) and sorted(y.tolist()) == sorted(labels.tolist())


def test_resolve_preset():
    assert resolve_preset("auto", 28, 1) == "flip" and resolve_preset("auto", 128, 3) == "default"
    with pytest.raises(ImagerecError, match="unknown augmentation preset 'wild'"):
        resolve_preset("wild", 32, 3)


def test_parallel_decode_matches_serial(tmp_path: Path):
    rng = np.random.default_rng(0)
    paths = [
        str(f.write(tmp_path / f"{i}.png", f.encode(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8))))
        for i in range(520)
    ]
    spec = PipelineSpec(8, 3)
    assert np.array_equal(decode_all(paths, spec, workers=2), decode_all(paths, spec, workers=1))


def test_choose_cache():
    spec = PipelineSpec(32, 3)
    assert choose_cache("auto", 1000, spec) == "memory"
    assert choose_cache("auto", 10_000_000, spec) == "none"
    assert choose_cache("disk", 10, spec) == "disk"


@pytest.mark.slow  # a fresh process imports TensorFlow: 10-50 s on a shared 2-core machine
def test_a_user_script_without_main_guard_can_decode_in_parallel_after_importing_tensorflow(tmp_path: Path):
    """A spawn pool would re-run this script in every worker and crash; the pool must not need the guard."""
    import subprocess
    import sys

    rng = np.random.default_rng(1)
    for i in range(520):
        f.write(tmp_path / "d" / f"{i}.png", f.encode(rng.integers(0, 256, (6, 6), dtype=np.uint8)))
    script = tmp_path / "train_me.py"
    script.write_text(
        "import glob, sys\n"
        "import tensorflow\n"
        "from imagerec.data.pipeline import PipelineSpec, decode_all\n"
        "from imagerec.data.scan import scan_dataset\n"
        f"paths = sorted(glob.glob({str(tmp_path / 'd' / '*.png')!r}))\n"
        "print(decode_all(paths, PipelineSpec(4, 1), workers=2).shape)\n"
        f"print(len(scan_dataset({str(tmp_path)!r}, workers=2).images))\n"
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["(520,", "4,", "4,", "1)", "520"]


def test_scan_keeps_decoded_pixels_from_worker_processes(tmp_path: Path):
    """>= 256 files: the scan decodes in a pool of processes; the kept pixels come back equal to a fresh decode."""
    from imagerec.data.scan import scan_dataset

    rng = np.random.default_rng(1)
    for i in range(300):
        mode_shape = (9, 11) if i % 2 else (9, 11, 3)  # grey and colour
        f.write(
            tmp_path / "ab"[i % 2] / f"{i}.png", f.encode(rng.integers(0, 256, mode_shape, dtype=np.uint8))
        )
    result = scan_dataset(tmp_path, workers=2, keep_decoded=True)
    assert len(result.decoded) == 300
    for path, pixels in list(result.decoded.items())[::37]:
        channels = 1 if pixels.ndim == 2 else 3
        assert np.array_equal(pixels.reshape(9, 11, channels), load_image(path, None, channels))


def test_training_epochs_visit_every_image_once_in_a_new_order_without_autotuning():
    """The index shuffle: each epoch is a permutation of all images (pixels stay paired with their labels), the
    order changes between epochs, and autotuning is off (its thread stalled iterator teardown by up to 10 s)."""
    n = 50
    images = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1) * np.ones((1, 4, 4, 1), np.uint8)
    labels = np.arange(n, dtype=np.int32)
    ds = make_dataset(
        [], [], PipelineSpec(4, 1, batch_size=16), training=True, seed=3, arrays=(images, labels)
    )
    assert ds.options().autotune.enabled is False
    epochs = []
    for _ in range(2):
        xs, ys = _collect(ds)
        assert sorted(ys.tolist()) == list(range(n))
        assert np.array_equal(xs[:, 0, 0, 0], ys.astype(np.float32))  # each image still has its own label
        epochs.append(ys.tolist())
    assert epochs[0] != epochs[1] and epochs[0] != list(range(n))
    assert [int(y.shape[0]) for _, y in ds] == [16, 16, 16, 2]
