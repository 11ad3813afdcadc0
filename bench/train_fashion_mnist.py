"""Fashion-MNIST: the TensorFlow tutorial's code vs ``imagerec train`` (default recipe), side by side.

Both sides read the same PNG folder tree (``imagerec data builtin fashion-mnist DIR``: 60k train / 10k official
test), each runs as its own process (so the wall time includes importing TensorFlow, decoding and caching the
images, training and the test evaluation), one after the other on the same machine, and the script prints test
accuracy, wall time and the time ratio imagerec / tutorial.

    python bench/train_fashion_mnist.py                      # tutorial, then imagerec defaults
    python bench/train_fashion_mnist.py --repeat 2           # alternate the two sides twice
    python bench/train_fashion_mnist.py --sides imagerec --imagerec-args "--epochs 40"   # the 10-minute run

The tutorial side is https://www.tensorflow.org/tutorials/images/classification as written (image_dataset_from_directory
with an 80/20 validation split, cache/shuffle/prefetch, Rescaling + 3x(Conv2D 16/32/64 relu same + MaxPool) +
Flatten + Dense 128 + Dense N, Adam, SparseCategoricalCrossentropy(from_logits=True), 10 epochs, batch 32),
with the image size set to the data's 28x28 grey instead of 180x180 RGB.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()


def tutorial(data: Path) -> None:
    """The tutorial's code (runs in a child process; prints one JSON line)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    from tensorflow.keras import layers
    from tensorflow.keras.models import Sequential

    batch_size, img_height, img_width = 32, 28, 28
    train_ds = tf.keras.utils.image_dataset_from_directory(
        data / "train", validation_split=0.2, subset="training", seed=123,
        image_size=(img_height, img_width), batch_size=batch_size, color_mode="grayscale",
    )  # fmt: skip
    val_ds = tf.keras.utils.image_dataset_from_directory(
        data / "train", validation_split=0.2, subset="validation", seed=123,
        image_size=(img_height, img_width), batch_size=batch_size, color_mode="grayscale",
    )  # fmt: skip
    test_ds = tf.keras.utils.image_dataset_from_directory(
        data / "test",
        image_size=(img_height, img_width),
        batch_size=batch_size,
        color_mode="grayscale",
        shuffle=False,
    )
    class_names = train_ds.class_names
    autotune = tf.data.AUTOTUNE
    train_ds = train_ds.cache().shuffle(1000).prefetch(buffer_size=autotune)
    val_ds = val_ds.cache().prefetch(buffer_size=autotune)
    model = Sequential([
        layers.Rescaling(1.0 / 255, input_shape=(img_height, img_width, 1)),
        layers.Conv2D(16, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(),
        layers.Conv2D(32, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(),
        layers.Conv2D(64, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(),
        layers.Flatten(),
        layers.Dense(128, activation="relu"),
        layers.Dense(len(class_names)),
    ])  # fmt: skip
    model.compile(
        optimizer="adam",
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    t0 = time.perf_counter()
    model.fit(train_ds, validation_data=val_ds, epochs=10, verbose=0)
    fit_s = time.perf_counter() - t0
    _, acc = model.evaluate(test_ds, verbose=0)
    print(json.dumps({"test_accuracy": float(acc), "fit_seconds": fit_s}))


def run_side(side: str, data: Path, out: Path, extra: list[str]) -> dict:
    if side == "tutorial":
        cmd = [sys.executable, str(HERE), "--child-tutorial", str(data)]
    else:
        imagerec = Path(sys.executable).with_name("imagerec")
        cmd = [str(imagerec), "train", str(data), "--out", str(out), "--force", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{side} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    if side == "tutorial":
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        return {"side": side, "wall_s": wall, **result}
    metrics = json.loads((out / "metrics.json").read_text())
    config = json.loads((out / "config.json").read_text())
    flops = metrics["flops_per_image"]
    return {
        "side": side,
        "wall_s": wall,
        "test_accuracy": metrics["test"]["accuracy"],
        "fit_seconds": metrics["fit_seconds"],
        "epochs": metrics["epochs_completed"],
        "images_per_second": metrics["images_per_second"],
        "mflops_per_image": flops / 1e6,
        # training costs ~3x the forward pass (forward + two backward matmuls per layer)
        "train_gflops_per_s": 3 * flops * metrics["images_per_second"] / 1e9,
        "precision": config["precision"],
        "recipe": {
            k: config["config"]["train"][k] for k in ("epochs", "batch_size", "learning_rate", "schedule")
        }
        | {"model": config["config"]["model"]["name"], "augment": config["config"]["augment"]["preset"]},
    }


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child-tutorial":
        tutorial(Path(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/tmp/fashion-mnist-png"))
    parser.add_argument("--sides", default="tutorial,imagerec")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument(
        "--imagerec-args", default="", help="extra flags for 'imagerec train' (default: none)"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="where the imagerec run goes (default: a temp dir)"
    )
    args = parser.parse_args()
    if not (args.data / ".complete").exists():
        print(f"writing the PNG tree to {args.data} ...", flush=True)
        subprocess.run(
            [
                str(Path(sys.executable).with_name("imagerec")),
                "data",
                "builtin",
                "fashion-mnist",
                str(args.data),
            ],
            check=True,
        )
    out = args.out or Path(tempfile.mkdtemp(prefix="imagerec-bench-")) / "run"
    rows = []
    for _ in range(args.repeat):
        for side in args.sides.split(","):
            row = run_side(side, args.data, out, shlex.split(args.imagerec_args))
            rows.append(row)
            print(json.dumps(row), flush=True)
    for side in ("tutorial", "imagerec"):
        mine = [r for r in rows if r["side"] == side]
        if mine:
            walls = sorted(r["wall_s"] for r in mine)
            accs = [r["test_accuracy"] for r in mine]
            print(
                f"{side:9s} test accuracy {sum(accs) / len(accs):.4f}  wall {walls[len(walls) // 2]:.1f}s (median of {len(mine)})"
            )
    tut = [r["wall_s"] for r in rows if r["side"] == "tutorial"]
    ours = [r["wall_s"] for r in rows if r["side"] == "imagerec"]
    if tut and ours:
        ratios = sorted(o / t for o, t in zip(ours, tut, strict=False))
        print(
            f"time ratio imagerec / tutorial: {ratios[len(ratios) // 2]:.2f} (median of {len(ratios)} pairs; <= 1.0 is the bar)"
        )
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
