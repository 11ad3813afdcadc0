"""Which epoch to keep when the validation set is small: rules compared on the same runs, over several seeds.

A texture folder like a user's (3 classes, 150 grey crops each of skimage's brick / grass / gravel photos, scale,
contrast and noise jittered), trained with the defaults of ``imagerec train`` (10% val = 45 images, 10% test,
30 epochs). Every epoch's model is also scored on 900 fresh crops ("holdout", never used to choose), so each rule
below picks its epoch from the *validation* logs and is judged on the holdout, all from the same runs:

- ``first-best-acc``: the first epoch of highest val accuracy (imagerec <= 0.x: strict improvement);
- ``acc-then-loss``: highest val accuracy, ties broken by lower val loss (the rule now);
- ``min-loss``: lowest val loss;  ``last``: the last epoch.

    python bench/epoch_selection.py --seeds 0 1 2 3 4 5 --out /tmp/epoch_selection
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

CLASSES = ("brick", "grass", "gravel")


def crop(texture: np.ndarray, rng: np.random.Generator, size: int = 40) -> np.ndarray:
    """A random square crop (80-112 px) of ``texture``, resized to ``size``, contrast/brightness/noise jittered."""
    from PIL import Image

    side = int(rng.integers(80, 113))
    y, x = rng.integers(0, texture.shape[0] - side), rng.integers(0, texture.shape[1] - side)
    patch = Image.fromarray(texture[y : y + side, x : x + side]).resize((size, size), Image.BILINEAR)
    img = np.asarray(patch, np.float32)
    img = (img - img.mean()) * rng.uniform(0.85, 1.15) + img.mean() + rng.uniform(-15, 15)
    img = np.rot90(img, int(rng.integers(4))) + rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def textures() -> dict[str, np.ndarray]:
    from skimage import data

    return {name: getattr(data, name)() for name in CLASSES}


def write_folder(root: Path, per_class: int, seed: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name, texture in textures().items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(crop(texture, rng)).save(root / name / f"{name}_{i:03d}.png")
    return root


def holdout(per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x, y = [], []
    for label, texture in enumerate(textures().values()):
        x += [crop(texture, rng)[..., None] for _ in range(per_class)]
        y += [label] * per_class
    return np.stack(x), np.asarray(y)


def train_one(data: Path, out: Path, seed: int, x: np.ndarray, y: np.ndarray) -> list[dict]:
    """One default run; each epoch's val logs and holdout accuracy."""
    import keras
    import tensorflow as tf

    from imagerec.run import RunDir
    from imagerec.settings import RunConfig
    from imagerec.training.learner import Learner
    from imagerec.training.trainer import apply_overrides

    epochs: list[dict] = []

    class Holdout(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.fn = tf.function(lambda t: self.model(t, training=False), reduce_retracing=True)

        def on_epoch_end(self, epoch, logs=None):
            probs = np.concatenate(
                [self.fn(tf.constant(x[i : i + 300], tf.float32)) for i in range(0, len(x), 300)]
            )
            row = {k: float(v) for k, v in (logs or {}).items() if k.startswith("val_")}
            epochs.append({"epoch": epoch + 1, **row, "holdout": float((probs.argmax(1) == y).mean())})

    class BenchLearner(Learner):
        def callbacks(self):
            return [*super().callbacks(), Holdout()]

    config = apply_overrides(RunConfig(), seed=seed)
    run = BenchLearner(data, config, RunDir(out), log=lambda *_: None).train()
    epochs[-1]["final"] = run.metrics
    return epochs


def choose(rows: list[dict], rule: str) -> dict:
    if rule == "last":
        return rows[-1]
    if rule == "min-loss":
        return min(rows, key=lambda r: r["val_loss"])
    if rule == "first-best-acc":
        return max(rows, key=lambda r: r["val_accuracy"])  # max() keeps the first of equals
    if rule == "acc-then-loss":
        return max(rows, key=lambda r: (r["val_accuracy"], -r["val_loss"]))
    raise ValueError(rule)


RULES = ("first-best-acc", "acc-then-loss", "min-loss", "last")


def report(runs: dict[int, list[dict]]) -> str:
    lines = [
        "| rule | kept epochs | holdout accuracy per seed | mean | min-max |",
        "|---|---|---|---|---|",
    ]
    oracle = [max(r["holdout"] for r in rows) for rows in runs.values()]
    for rule in RULES:
        picks = [choose(rows, rule) for rows in runs.values()]
        acc = [p["holdout"] for p in picks]
        lines.append(
            f"| {rule} | {' '.join(str(p['epoch']) for p in picks)} | {' '.join(f'{a:.3f}' for a in acc)} | "
            f"{statistics.mean(acc):.3f} | {min(acc):.3f}-{max(acc):.3f} |"
        )
    lines.append(f"| (best epoch on holdout, for reference) | | {' '.join(f'{a:.3f}' for a in oracle)} | "
                 f"{statistics.mean(oracle):.3f} | |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", type=Path, default=Path("/tmp/epoch_selection"))
    args = parser.parse_args()
    data = write_folder(args.out / "textures", per_class=150, seed=123)
    x, y = holdout(300, seed=456)
    results = args.out / "epochs.json"
    runs = {int(k): v for k, v in json.loads(results.read_text()).items()} if results.exists() else {}
    for seed in args.seeds:
        if seed in runs:
            continue
        t0 = time.perf_counter()
        shutil.rmtree(args.out / f"run-{seed}", ignore_errors=True)
        runs[seed] = train_one(data, args.out / f"run-{seed}", seed, x, y)
        results.write_text(json.dumps(runs, indent=1))
        print(f"seed {seed}: {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
    print(report({s: runs[s] for s in args.seeds}))


if __name__ == "__main__":
    main()
