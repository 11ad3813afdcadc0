"""Review -> retrain -> gate, end to end: does labelling the review queue fix drift better than labelling at random?

The scenario (issue 21's bar):

1. OLD = a Fashion-MNIST run (``--run``; default training recipe, ``builtin:fashion-mnist``).
2. It meets a shifted stream, recorded with the real ``Recorder`` exactly as ``serve --record`` writes it with its
   defaults (the pictures of unknown, low-confidence and out-of-distribution answers, and a 1% sample of the
   rest; both arms choose from these recorded pictures): ``--stream`` pictures drawn
   from Fashion-MNIST *train* images (none of OLD's test images), 45% as they are, 25% inverted, 20% blurred
   (Gaussian, radius 1.2) and 10% foreign handwritten digits (``builtin:mnist-5k``), which the oracle marks
   "none of these".
3. Two arms pick ``--budget`` pictures each: ``imagerec review REC --out QUEUE --size B --run OLD`` (the queue) and
   a seeded random draw of the recorded pictures (a new draw for each seed). An oracle (the true labels) labels both through the real
   ``LabelStore`` (class folders; digits -> ``.none``).
4. Each arm fine-tunes ``--seeds`` times: ``imagerec train REPLAY LABELLED --init OLD --epochs E --lr LR --seed S
   --test 0``, where REPLAY is ``--replay`` per class of other Fashion-MNIST train images (the old data the
   fine-tune must not forget; a control arm trains on REPLAY alone, once). Same epochs, rate and seeds in every
   arm. Fine-tunes of 200 new pictures vary a lot from seed to seed (shifted accuracy +-0.05 for the same
   pictures), so compare means over seeds, not one run.
5. Accuracy on a held-out shifted test set (``--test-size`` Fashion-MNIST *test* images, half inverted, half
   blurred; never in the pool) and on the same images unshifted; then ``imagerec compare OLD NEW --gate`` on
   OLD's own test split for the queue arm (must pass) and for a damaged copy of it (Gaussian noise of 0.5x the
   weights' std on the first conv layer; must fail).

    python bench/review_loop.py --run /tmp/shared-runs/fmnist [--seeds 4] [--epochs 4] [--json out.json]
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

IMAGEREC = [sys.executable, "-m", "imagerec"]


def shifted(images: np.ndarray, kinds: list[str]) -> np.ndarray:
    from PIL import Image, ImageFilter

    out = images.copy()
    for i, kind in enumerate(kinds):
        if kind == "inverted":
            out[i] = 255 - images[i]
        elif kind == "blurred":
            out[i] = np.asarray(Image.fromarray(images[i]).filter(ImageFilter.GaussianBlur(1.2)))
    return out


def png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def scores_of(clf, images: np.ndarray) -> np.ndarray:
    batch = np.stack([clf.preprocess(a) for a in images])
    return np.concatenate(
        [clf.predict_scores(batch[i : i + 256], embedding=True) for i in range(0, len(batch), 256)]
    )


def record_stream(clf, images, truth, root: Path) -> dict[str, object]:
    """Answer and record every stream picture; returns sha256 -> the oracle's label (None = none of these)."""
    import hashlib

    from imagerec.monitoring.records import Observation, Recorder
    from imagerec.prediction import split_embedding
    from imagerec.settings import RecordSettings

    scores = scores_of(clf, images)
    preds = clf.answers(scores, 5, None)
    emb = split_embedding(scores, len(clf.labels))
    rec = Recorder(root, RecordSettings(), ood_limit=clf.ood_threshold).start()  # what serve --record keeps
    oracle = {}
    for i, pred in enumerate(preds):
        data = png(images[i])
        oracle[hashlib.sha256(data).hexdigest()] = truth[i]
        rec.add(Observation(pred, data, emb[i] if emb is not None else None, clf.version, "keras"))
    rec.stop()
    return oracle


def label(items: list[tuple[str, str, Path]], oracle: dict, classes: list[str], dest: Path) -> dict[str, int]:
    """The oracle labels ``items`` (id, sha256, picture) through the real LabelStore."""
    from imagerec.monitoring.labels import LabelStore

    store = LabelStore(dest, classes)
    counts = {"labelled": 0, "none": 0}
    for item_id, sha, path in items:
        truth = oracle[sha]
        store.decide(item_id, path, truth if truth is not None else "none", reviewer="oracle")
        counts["labelled" if truth is not None else "none"] += 1
    return counts


def accuracy(run: Path, images: np.ndarray, names: list[str]) -> float:
    """Top-1 accuracy against the true class names (a fine-tuned run may order its classes differently)."""
    from imagerec.classifier import Classifier

    clf = Classifier.load(run, runtime="keras")
    batch = np.stack([clf.preprocess(a) for a in images])
    guess = np.asarray(clf.labels)[clf.raw_proba(batch).argmax(1)]
    return float((guess == np.asarray(names)).mean())


def damage(run: Path, out: Path) -> Path:
    from imagerec.run import RunDir

    shutil.copytree(run, out)
    rd = RunDir(out)
    model = rd.load_model()
    conv = next(layer for layer in model.layers if layer.get_weights() and "conv" in layer.name)
    weights = conv.get_weights()
    rng = np.random.default_rng(0)
    weights[0] = weights[0] + rng.normal(0, 0.5 * weights[0].std(), weights[0].shape).astype(weights[0].dtype)
    conv.set_weights(weights)
    rd.save_model(model)
    return out


def sh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*IMAGEREC, *args], capture_output=True, text=True)


def main() -> None:
    from imagerec.classifier import Classifier
    from imagerec.data.builtin import get_builtin

    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--stream", type=int, default=3000)
    ap.add_argument("--budget", type=int, default=200)
    ap.add_argument(
        "--replay", type=int, default=1000, help="old training images per class in every fine-tune"
    )
    ap.add_argument("--test-size", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--lr", type=float, default=0.0005, help="peak learning rate of the fine-tunes")
    ap.add_argument("--seeds", type=int, default=4, help="fine-tunes per arm (random: a new draw each)")
    ap.add_argument("--work", default=None)
    ap.add_argument("--json")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="review-loop-"))
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    fashion = get_builtin("fashion-mnist").load()
    FASHION_CLASSES = get_builtin("fashion-mnist").class_names  # noqa: N806
    (xtr, ytr), (xte, yte) = fashion["train"], fashion["test"]
    digits = np.concatenate([x for x, _ in get_builtin("mnist-5k").load().values()])
    order = rng.permutation(len(xtr))
    n_digits = args.stream // 10
    n_cloth = args.stream - n_digits
    pool_idx, replay_idx = order[:n_cloth], order[n_cloth:]
    kinds = rng.choice(["clean", "inverted", "blurred"], n_cloth, p=[0.5, 0.28, 0.22]).tolist()
    stream = np.concatenate([shifted(xtr[pool_idx], kinds), digits[rng.permutation(len(digits))[:n_digits]]])
    truth = [FASHION_CLASSES[int(c)] for c in ytr[pool_idx]] + [None] * n_digits
    # the held-out shifted test: OLD's test images (never in the pool), half inverted, half blurred
    test_idx = rng.permutation(len(xte))[: args.test_size]
    test_kinds = ["inverted" if i % 2 == 0 else "blurred" for i in range(len(test_idx))]
    x_shift, x_clean = shifted(xte[test_idx], test_kinds), xte[test_idx]
    y_test = [FASHION_CLASSES[int(c)] for c in yte[test_idx]]

    run = Path(args.run)
    clf = Classifier.load(run, runtime="keras")
    t0 = time.time()
    oracle = record_stream(clf, stream, truth, work / "rec")
    t_record = time.time() - t0
    t0 = time.time()
    out = sh(
        "review",
        str(work / "rec"),
        "--out",
        str(work / "queue"),
        "--size",
        str(args.budget),
        "--run",
        str(run),
        "--force",
    )
    if out.returncode:
        raise SystemExit(out.stderr)
    t_review = time.time() - t0
    from imagerec.monitoring.records import read_records
    from imagerec.monitoring.review import read_queue

    queue = read_queue(work / "queue")
    queue_items = [(it["id"], it["sha256"], queue.image_path(it)) for it in queue.items]
    records = read_records(work / "rec")
    recorded = [
        (r["sha256"][:16], r["sha256"], records.image_path(r)) for r in records.rows if r.get("image")
    ]

    replay, per_class = work / "replay", dict.fromkeys(FASHION_CLASSES, 0)
    for idx in replay_idx:
        cls = FASHION_CLASSES[int(ytr[idx])]
        if per_class[cls] < args.replay:
            per_class[cls] += 1
            (replay / cls).mkdir(parents=True, exist_ok=True)
            (replay / cls / f"r{idx}.png").write_bytes(png(xtr[idx]))

    def finetune(name: str, extra: list[Path], seed: int) -> Path:
        dest = work / f"new-{name}-s{seed}"
        out = sh("train", str(replay), *map(str, extra), "--init", str(run), "--out", str(dest), "--epochs",
                 str(args.epochs), "--lr", str(args.lr), "--seed", str(seed), "--test", "0", "--force")  # fmt: skip
        if out.returncode:
            raise SystemExit(f"train {name}: {out.stderr[-2000:]}")
        return dest

    result = {"old": {"shifted": accuracy(run, x_shift, y_test), "clean": accuracy(run, x_clean, y_test)}}
    arms: dict[str, dict[str, list[float]]] = {}
    picked = {"queue": label(queue_items, oracle, clf.labels, work / "labelled-queue")}
    for seed in range(args.seeds):
        draw = np.random.default_rng(100 + seed).permutation(len(recorded))[: args.budget]
        picked[f"random-s{seed}"] = label(
            [recorded[i] for i in draw], oracle, clf.labels, work / f"labelled-random-s{seed}"
        )
        for name, extra in (("replay-only", []), ("queue", [work / "labelled-queue"]),
                            ("random", [work / f"labelled-random-s{seed}"])):  # fmt: skip
            if name == "replay-only" and seed > 0:
                continue  # the control: how much the labels add at all (one fine-tune is enough)
            t0 = time.time()
            dest = finetune(name, extra, seed)
            arm = arms.setdefault(name, {"shifted": [], "clean": [], "train_s": []})
            arm["shifted"].append(accuracy(dest, x_shift, y_test))
            arm["clean"].append(accuracy(dest, x_clean, y_test))
            arm["train_s"].append(time.time() - t0)
            print(name, seed, {k: v[-1] for k, v in arm.items()}, flush=True)
    result["arms"] = {
        k: {m: statistics.mean(v) for m, v in d.items()}
        | {"sd_shifted": statistics.stdev(d["shifted"]) if len(d["shifted"]) > 1 else 0.0, "runs": d}
        for k, d in arms.items()
    }
    result["picked"] = picked
    gate_ok = sh("compare", str(run), str(work / "new-queue-s0"), "--gate")
    damaged = damage(work / "new-queue-s0", work / "damaged")
    gate_bad = sh("compare", str(run), str(damaged), "--gate")
    result["gate"] = {"new_exit": gate_ok.returncode, "new_out": gate_ok.stdout.strip().splitlines()[-1:],
                      "damaged_exit": gate_bad.returncode, "damaged_out": gate_bad.stdout.strip().splitlines()[-3:]}  # fmt: skip
    result["timing_s"] = {"record": t_record, "review": t_review}
    result["settings"] = vars(args) | {"work": str(work)}
    print(json.dumps(result, indent=2, default=str))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
