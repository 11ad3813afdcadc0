"""Multi-label training on ``builtin:fashion-mnist-pairs`` with default settings, side by side with single-label
training on the same number of images.

Three default ``imagerec train`` runs, each its own process, in turns (``--rounds`` times):

* ``multilabel``: the 30k training pictures of fashion-mnist-pairs (two Fashion-MNIST items side by side, labels =
  the set of their classes), tested on its 5k test pictures: macro F1, mAP (bar: >= 0.90 and >= 0.95);
* ``single-same-pictures``: the same 30k pictures, same size, one label each (the class of the left item): only the
  task differs, so the time ratio is the cost of the multi-label head, loss, metrics and thresholds;
* ``single-fashion-mnist``: 30k plain Fashion-MNIST training images (the first 30k of the official split, 28x28).

The bar: multi-label wall time <= 1.5x the single-label one. Prints a Markdown table (and ``--json``).

    python bench/multilabel.py [--work /tmp/mlbench] [--rounds 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RUNS = ("multilabel", "single-same-pictures", "single-fashion-mnist")


def left_item_csv(pairs: Path) -> Path:
    """``left.csv`` beside the pairs' ``labels.csv``: each picture with the class of its left item (single-label)."""
    from imagerec.data import builtin

    rows = ["path,label,split"]
    rng = np.random.default_rng(builtin.PAIRS_SEED)  # the pairing of builtin._load_fashion_pairs, replayed
    sets = {}
    for line in (pairs / "labels.csv").read_text().splitlines()[1:]:
        path, names, _ = line.split(",")
        sets[path] = set(names.split(";"))
    for split, (images, labels) in builtin._load_fashion().items():
        order = rng.permutation(len(images) - len(images) % 2)
        for i, left in enumerate(order[0::2]):
            path, name = f"images/{split}/{i:05d}.png", builtin.FASHION_CLASSES[int(labels[left])]
            if name not in sets[path]:
                raise SystemExit(f"the pairing replay disagrees with labels.csv at {path}")
            rows.append(f"{path},{name},{split}")
    (pairs / "left.csv").write_text("\n".join(rows) + "\n")
    return pairs / "left.csv"


def prepare(work: Path) -> dict[str, Path]:
    from imagerec.data import builtin

    pairs = builtin.write_builtin("fashion-mnist-pairs", work / "pairs")
    fashion = builtin.write_builtin("fashion-mnist", work / "fashion-30k", limit=30_000)
    return {
        "multilabel": pairs / "labels.csv",
        "single-same-pictures": left_item_csv(pairs),
        "single-fashion-mnist": fashion,
    }


def train(name: str, data: Path, out: Path) -> dict:
    exe = str(Path(sys.executable).with_name("imagerec"))
    t0 = time.perf_counter()
    proc = subprocess.run(
        [exe, "train", str(data), "--out", str(out), "--force"], capture_output=True, text=True
    )
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{name}: imagerec train failed:\n{proc.stderr[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    config = json.loads((out / "config.json").read_text())
    test = metrics["test"]
    return {
        "run": name,
        "wall_s": round(wall, 1),
        "fit_s": metrics["fit_seconds"],
        "epochs": metrics["epochs_completed"],
        "augment": config["config"]["augment"]["preset"],
        "image_size": config["image_size"],
        "train_images": int(
            sum(
                1
                for line in (out / "manifest.csv").read_text().splitlines()[1:]
                if line.split(",")[-2] == "train"
            )
        ),  # fmt: skip
        "test": {k: round(v, 4) for k, v in test.items() if isinstance(v, float)},
        "first_log_line": proc.stdout.splitlines()[0] if proc.stdout else "",
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/mlbench")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--json")
    args = ap.parse_args()
    work = Path(args.work)
    data = prepare(work)
    results = []
    for r in range(args.rounds):
        for name in RUNS:
            results.append({**train(name, data[name], work / f"run-{name}-{r}"), "round": r})
            print(json.dumps(results[-1]), flush=True)
    print("\n| round | run | train images | epochs | augment | wall s | fit s | test |")
    print("|---|---|---|---|---|---|---|---|")
    for x in results:
        t = x["test"]
        figures = (
            f"macro F1 {t['macro_f1']:.4f}, mAP {t['mAP']:.4f}, micro F1 {t['micro_f1']:.4f}"
            if "mAP" in t
            else f"accuracy {t['accuracy']:.4f}"
        )
        print(f"| {x['round']} | {x['run']} | {x['train_images']} | {x['epochs']} | {x['augment']} | {x['wall_s']} | "
              f"{x['fit_s']} | {figures} |")  # fmt: skip
    for r in range(args.rounds):
        row = {x["run"]: x for x in results if x["round"] == r}
        ml = row["multilabel"]["wall_s"]
        print(
            f"round {r}: multi-label / single-label wall time = {ml / row['single-same-pictures']['wall_s']:.2f} "
            f"(same pictures), {ml / row['single-fashion-mnist']['wall_s']:.2f} (Fashion-MNIST 30k)"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
