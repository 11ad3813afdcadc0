"""Input-pipeline throughput: imagerec vs ``tf.keras.utils.image_dataset_from_directory``, measured side by side.

Two folders are written once under ``--workdir``:

* ``png``: N Fashion-MNIST training images (28x28 grey PNG, from the Debian package, via ``write_builtin``);
* ``jpeg``: N 64x64 colour JPEG crops of the scikit-image sample photos (one class per photo).

For each folder and each repetition (the methods interleaved, so machine load hits them alike) it times one epoch
of decode + resize to ``--size``:

* ``imagerec load_arrays + epoch``: the default training path (process-pool decode with Pillow into memory, then
  one pass of ``make_dataset``);
* ``imagerec streaming (cache=none)``: decode inside tf.data on every epoch;
* ``keras image_dataset_from_directory``: the plain Keras baseline (TF decoders, one epoch);
* ``keras + .cache() (tutorial), later epoch``: the same dataset as Keras's "Load and preprocess images" tutorial
  writes it, ``.cache().shuffle(1000).prefetch(AUTOTUNE)``, timed on an epoch after the one that filled the cache:
  the baseline for imagerec's cached epoch (the tutorial augments inside the model, so its pipeline does less);
* ``imagerec cached epoch (augment=...)``: one more epoch over the already decoded, augmented training dataset,
  which is what every epoch after the first costs;
* for scale, the training speed of the default small model (``imagerec-cnn``) on the cached data: the pipeline
  is not the bottleneck while its cached, augmented epoch is faster than this.

Plus ``imagerec data inspect`` (scan: decode + hashes + duplicate search) of 10,000 PNG files.

Run: ``python bench/pipeline.py --out bench/RESULTS-data.md`` (about 2-4 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def write_jpeg_folder(dest: Path, n: int, size: int = 64) -> Path:
    from PIL import Image
    from skimage import data as samples

    if (dest / ".complete").exists():
        return dest
    photos = {"astronaut": samples.astronaut(), "coffee": samples.coffee(), "chelsea": samples.chelsea(),
              "rocket": samples.rocket(), "camera": np.stack([samples.camera()] * 3, axis=-1)}  # fmt: skip
    rng = np.random.default_rng(0)
    names = sorted(photos)
    for i in range(n):
        name = names[i % len(names)]
        photo = photos[name]
        crop = int(rng.integers(size, min(photo.shape[:2]) // 2))
        y, x = (int(rng.integers(0, photo.shape[k] - crop)) for k in (0, 1))
        img = Image.fromarray(photo[y : y + crop, x : x + crop]).resize(
            (size, size), Image.Resampling.BILINEAR
        )
        (dest / name).mkdir(parents=True, exist_ok=True)
        img.save(dest / name / f"{i:05d}.jpg", quality=90)
    (dest / ".complete").write_text("ok\n")
    return dest


def prepare(workdir: Path, n: int) -> dict[str, tuple[Path, int]]:
    from imagerec.data.builtin import write_builtin

    fashion = write_builtin("fashion-mnist", workdir / "fashion", limit=max(n, 5000))
    return {"png": (fashion / "train", 1), "jpeg": (write_jpeg_folder(workdir / f"jpeg{n}", n), 3)}


def rows_of(folder: Path, n: int):
    from imagerec.data.sources import load_source
    from imagerec.data.split import ManifestRow

    source = load_source(folder)
    samples = sorted(source.samples, key=lambda s: s.path)[:n]
    return [ManifestRow(s.path, s.label, "train", "") for s in samples], source.class_names


def epoch(ds) -> int:
    return sum(int(y.shape[0]) for _, y in ds)


def methods(
    folder: Path, channels: int, n: int, size: int, batch: int, preset: str
) -> dict[str, Callable[[], int]]:
    import tensorflow as tf

    from imagerec.data.augment import build_augment
    from imagerec.data.pipeline import PipelineSpec, load_arrays, make_dataset
    from imagerec.models.registry import build_model

    rows, classes = rows_of(folder, n)
    spec = PipelineSpec(size, channels, "stretch", batch, "memory")
    augment = build_augment(preset, seed=0)
    cached = make_dataset(None, classes, spec, True, augment, 0, load_arrays(rows, classes, spec))

    def imagerec_memory() -> int:
        arrays = load_arrays(rows, classes, spec)
        return epoch(make_dataset(None, classes, spec, False, None, 0, arrays))

    def imagerec_streaming() -> int:
        return epoch(make_dataset(rows, classes, PipelineSpec(size, channels, "stretch", batch, "none")))

    model = build_model("imagerec-cnn", size, channels, len(classes))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    plain = make_dataset(None, classes, spec, True, None, 0, load_arrays(rows, classes, spec))
    model.fit(plain, epochs=1, verbose=0)  # warm-up: tracing

    def train_epoch() -> int:
        model.fit(plain, epochs=1, verbose=0)
        return len(rows)

    def keras_baseline() -> int:
        ds = tf.keras.utils.image_dataset_from_directory(
            folder, image_size=(size, size), batch_size=batch, color_mode="grayscale" if channels == 1 else "rgb",
            shuffle=False, verbose=False,
        )  # fmt: skip
        return epoch(ds.prefetch(tf.data.AUTOTUNE))

    tutorial = tf.keras.utils.image_dataset_from_directory(
        folder, image_size=(size, size), batch_size=batch, color_mode="grayscale" if channels == 1 else "rgb",
        verbose=False,
    ).cache().shuffle(1000).prefetch(buffer_size=tf.data.AUTOTUNE)  # fmt: skip
    epoch(tutorial)  # the first epoch fills the cache; the timed ones read it

    return {
        "imagerec load_arrays + epoch (default)": imagerec_memory,
        "imagerec streaming (cache=none)": imagerec_streaming,
        "keras image_dataset_from_directory": keras_baseline,
        "keras + .cache() (tutorial), later epoch": lambda: epoch(tutorial),
        f"imagerec cached epoch (augment={preset})": lambda: epoch(cached),
        "for scale: training imagerec-cnn on cached data (fit, 1 epoch)": train_epoch,
    }


def time_all(named: dict[str, Callable[[], int]], repeats: int) -> dict[str, float]:
    """Median images/s of each method; the methods are interleaved within every repetition."""
    rates: dict[str, list[float]] = {name: [] for name in named}
    for _ in range(repeats):
        for name, fn in named.items():
            start = time.perf_counter()
            count = fn()
            rates[name].append(count / (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in rates.items()}


def time_scan(folder: Path, repeats: int) -> tuple[int, float]:
    from imagerec.data.scan import scan_dataset

    times, count = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        count = len(scan_dataset(folder).images)
        times.append(time.perf_counter() - start)
    return count, statistics.median(times)


def machine() -> str:
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
            if line.startswith("Model name")
        )
    except (OSError, StopIteration):
        model = platform.processor() or "unknown CPU"
    return f"{model}, {os.cpu_count()} CPU cores, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="images per folder")
    parser.add_argument("--size", type=int, default=32, help="resize target (square)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--preset", default="default", help="augmentation preset of the cached epoch")
    parser.add_argument(
        "--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "imagerec-bench"
    )
    parser.add_argument("--out", type=Path, help="write the Markdown table here")
    args = parser.parse_args()
    import tensorflow as tf

    folders = prepare(args.workdir, args.n)
    load = os.getloadavg()[0]
    results = {}
    for kind, (folder, channels) in folders.items():
        print(f"{kind}: {folder} ({args.n} images, {channels} channel(s)) ...", flush=True)
        results[kind] = time_all(
            methods(folder, channels, args.n, args.size, args.batch, args.preset), args.repeats
        )
        for name, rate in results[kind].items():
            print(f"  {name:45s} {rate:9.0f} img/s", flush=True)
    scanned, scan_s = time_scan(args.workdir / "fashion", args.repeats)
    print(f"inspect of {scanned} PNG files: {scan_s:.1f} s", flush=True)
    lines = [
        f"# Data pipeline throughput ({dt.date.today().isoformat()})",
        "",
        f"Machine: {machine()}, TensorFlow {tf.__version__}. Load average at start: {load:.1f} "
        "(other engineers' jobs were running on the same 2 cores, so absolute figures are low and noisy; "
        "compare the ratios, which were measured side by side, interleaved, median of "
        f"{args.repeats}).",
        "",
        f"One epoch of decode + resize to {args.size}x{args.size}, batch {args.batch}, {args.n} images per folder. "
        "Command: `python bench/pipeline.py --out bench/RESULTS-data.md`.",
        "",
        "| method | PNG 28x28 grey (img/s) | JPEG 64x64 colour (img/s) | PNG vs keras | JPEG vs keras "
        "| PNG vs keras .cache() | JPEG vs keras .cache() |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    base, cached = "keras image_dataset_from_directory", "keras + .cache() (tutorial), later epoch"
    for name in results["png"]:
        png, jpeg = results["png"][name], results["jpeg"][name]
        lines.append(
            f"| {name} | {png:,.0f} | {jpeg:,.0f} | {png / results['png'][base]:.2f}x | "
            f"{jpeg / results['jpeg'][base]:.2f}x | {png / results['png'][cached]:.2f}x | "
            f"{jpeg / results['jpeg'][cached]:.2f}x |"
        )
    lines += [
        "",
        f"`imagerec data inspect` of {scanned:,} Fashion-MNIST PNG files (decode, sha256, thumbnail, duplicate "
        f"search; decode pool of threads, as TF is loaded): {scan_s:.1f} s ({scanned / scan_s:,.0f} files/s).",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
