"""Out-of-distribution detection of a run, side by side: the kNN and Mahalanobis scores against max-softmax.

In-distribution: the run's test split. Out-of-distribution: MNIST handwritten digits (``builtin:mnist-5k``) and
crops of natural photographs (scikit-image's sample photos, random 64-192 px crops, grey, resized like any input).
Also times what the embedding and the score add to one image's prediction.

    python bench/ood.py --run runs/fmnist [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def photo_crops(dest: Path, count: int = 2000, seed: int = 0) -> Path:
    """``count`` random crops of scikit-image's sample photos as PNG files (a second, different OOD set)."""
    from PIL import Image
    from skimage import data

    rng = np.random.default_rng(seed)
    names = ["astronaut", "coffee", "chelsea", "camera", "rocket", "immunohistochemistry", "hubble_deep_field",
             "motorcycle_left", "retina", "page", "moon", "coins", "brick", "grass", "gravel", "cat"]  # fmt: skip
    photos = []
    for name in names:
        try:
            photos.append(np.asarray(getattr(data, name)()))
        except Exception:  # noqa: BLE001 - a sample missing from this scikit-image
            continue
    photos = [p if p.ndim == 3 else np.repeat(p[..., None], 3, axis=2) for p in photos]
    dest.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        img = photos[i % len(photos)][..., :3]
        side = int(rng.integers(64, min(192, *img.shape[:2]) + 1))
        y, x = rng.integers(0, img.shape[0] - side + 1), rng.integers(0, img.shape[1] - side + 1)
        Image.fromarray(img[y : y + side, x : x + side].astype(np.uint8)).save(dest / f"crop{i:05d}.png")
    return dest


def main() -> None:
    from imagerec.classifier import Classifier
    from imagerec.evaluation.data import run_split
    from imagerec.evaluation.ood import load_ood_images, separation
    from imagerec.runtime import predict_in_batches

    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--json")
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args()
    clf = Classifier.load(args.run, runtime="keras")
    ref = clf.reference
    if ref is None:
        raise SystemExit("the run has no reference.npz: run 'imagerec calibrate RUN' first")
    test = run_split(clf, "test")
    tmp = Path(tempfile.mkdtemp(prefix="imagerec-ood-"))
    # digits: the selection set the default method was chosen on; the other two are reported, not tuned on
    sets = {"digits (selection)": "builtin:digits", "mnist-5k": "builtin:mnist-5k", "photo-crops": str(photo_crops(tmp / "crops"))}

    def scores(images):
        raw, emb = predict_in_batches(clf.raw_outputs, images, 256, embedding=True)
        out = {"msp": 1.0 - clf.calibrated(raw).max(1), "mahalanobis": ref.score(emb, "mahalanobis")}
        for k in (1, 5, 10, 50):
            ref.k = k
            out[f"knn(k={k})"] = ref.score(emb, "knn")
        ref.k = 10
        return out

    id_scores = scores(test.images)
    report = {"run": args.run, "num_test": int(len(test.y)), "sets": {}}
    for name, source in sets.items():
        images, _ = load_ood_images(clf, source)
        ood = scores(images)
        rows = {m: dict(zip(("auroc", "fpr_at_95_tpr"), separation(id_scores[m], ood[m]), strict=True)) for m in ood}
        report["sets"][name] = {"num_images": int(len(images)), **rows}
        for m, r in rows.items():
            print(f"{name:18s} {m:14s} AUROC {r['auroc']:.4f}  FPR@95%TPR {r['fpr_at_95_tpr']:.4f}")

    # cost: one image through the model's own single output (the runtime before embeddings) vs predict_scores
    # (probabilities + embedding in one call + the OOD score)
    import tensorflow as tf

    one = test.images[:1]
    model = clf.keras_model()
    plain = tf.function(lambda x: model(x, training=False), input_signature=[tf.TensorSpec((None, *one.shape[1:]), tf.float32)])

    def probabilities(batch):
        return clf.calibrated(plain(tf.convert_to_tensor(batch.astype(np.float32))).numpy())

    timings = {}
    for name, fn in (("probabilities", probabilities), ("probabilities+ood", clf.predict_scores)):
        fn(one)
        runs = []
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(args.repeats):
                fn(one)
            runs.append((time.perf_counter() - t) / args.repeats * 1e3)
        timings[name] = statistics.median(runs)
    report["latency_ms"] = timings
    report["ood_overhead"] = timings["probabilities+ood"] / timings["probabilities"] - 1
    print(f"batch-1 latency: {timings['probabilities']:.3f} ms -> {timings['probabilities+ood']:.3f} ms "
          f"with the OOD score (+{report['ood_overhead']:.1%})")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
