"""Benchmark: ``imagerec video`` (reader thread + batched worker) against a naive loop, side by side.

The clip: Fashion-MNIST test images upscaled to 320x240, each held 15 frames at 30 fps, followed by real photos from
``skimage.data`` (also held 15 frames). Both contenders decode the same MP4 and use the same preprocessing
(``Classifier.preprocess``); the naive loop is ``read frame -> model.predict(one frame) -> draw [-> write]``.
Runs alternate (imagerec, naive, imagerec, naive, ...) so machine load hits both alike; medians are reported.

    python bench/video.py --run /tmp/fm-run            # train one with: imagerec train /tmp/fm --out /tmp/fm-run --epochs 2
    python bench/video.py --run /tmp/fm-run --images 20 --repeats 1   # quicker
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from imagerec import Classifier  # noqa: E402
from imagerec.video.output import run_video  # noqa: E402
from imagerec.video.stream import VideoConfig  # noqa: E402

SIZE = (320, 240)
HOLD = 15
FPS = 30.0


def build_clip(path: Path, n_images: int) -> list[str | None]:
    """Write the clip; return the true label of every frame (None for the photos)."""
    import cv2
    from skimage import data as skdata

    from imagerec.data.builtin import FASHION_CLASSES, get_builtin

    images, labels = get_builtin("fashion-mnist").load()["test"]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, SIZE)
    truth: list[str | None] = []
    for img, lab in zip(images[:n_images], labels[:n_images], strict=True):
        frame = cv2.cvtColor(cv2.resize(img, SIZE, interpolation=cv2.INTER_LINEAR), cv2.COLOR_GRAY2BGR)
        for _ in range(HOLD):
            writer.write(frame)
        truth += [FASHION_CLASSES[int(lab)]] * HOLD
    for name in ("astronaut", "coffee", "chelsea", "rocket", "camera"):
        photo = getattr(skdata, name)()
        photo = (
            cv2.cvtColor(photo, cv2.COLOR_GRAY2BGR)
            if photo.ndim == 2
            else cv2.cvtColor(photo, cv2.COLOR_RGB2BGR)
        )
        frame = cv2.resize(photo, SIZE, interpolation=cv2.INTER_AREA)
        for _ in range(HOLD):
            writer.write(frame)
        truth += [None] * HOLD
    writer.release()
    return truth


def naive(clf: Classifier, clip: Path, out: Path | None, max_frames: int) -> tuple[float, int]:
    """read frame -> model.predict -> draw (-> write): frames per second over at most ``max_frames`` frames."""
    import cv2

    cap = cv2.VideoCapture(str(clip))
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), FPS, SIZE) if out else None
    start, n = time.perf_counter(), 0
    while n < max_frames:
        ok, frame = cap.read()
        if not ok:
            break
        x = clf.preprocess(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))[None]
        probs = clf.model.predict(x, verbose=0)[0]
        label = clf.labels[int(np.argmax(probs))]
        cv2.putText(
            frame, f"{label} {probs.max():.0%}", (4, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1
        )
        if writer is not None:
            writer.write(frame)
        n += 1
    elapsed = time.perf_counter() - start
    cap.release()
    if writer is not None:
        writer.release()
    return n / elapsed, n


def ours(clf: Classifier, clip: Path, out: Path | None, labels: list[str]) -> tuple[float, int]:
    """``imagerec video`` (run_video: the CLI's code path after the model is loaded)."""
    start = time.perf_counter()
    summary = run_video(
        clf,
        str(clip),
        out=out,
        config=VideoConfig(smooth=0.0, batch_size=32),
        on_frame=lambda r: labels.append(r.label),
    )
    return summary["frames_read"] / (time.perf_counter() - start), summary["frames_read"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default="/tmp/fm-run", help="a Fashion-MNIST run directory")
    parser.add_argument("--images", type=int, default=40, help="Fashion-MNIST test images in the clip")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--naive-frames", type=int, default=150, help="frames the (slow) naive loop times")
    args = parser.parse_args()

    clf = Classifier.load(args.run)
    tmp = Path(tempfile.mkdtemp(prefix="imagerec-bench-video-"))
    clip = tmp / "clip.mp4"
    truth = build_clip(clip, args.images)
    clf.predict_proba(np.zeros((1, clf.image_size, clf.image_size, clf.channels), np.uint8))  # trace once
    clf.model.predict(np.zeros((1, clf.image_size, clf.image_size, clf.channels), np.float32), verbose=0)
    rows = []
    for write in (False, True):
        fps_ours, fps_naive, labels = [], [], []
        for _ in range(args.repeats):
            labels = []
            fps_ours.append(ours(clf, clip, tmp / "ours.mp4" if write else None, labels)[0])
            fps_naive.append(naive(clf, clip, tmp / "naive.mp4" if write else None, args.naive_frames)[0])
        o, n = statistics.median(fps_ours), statistics.median(fps_naive)
        rows.append((write, o, n, fps_ours, fps_naive))
    scored = [(p, t) for p, t in zip(labels, truth, strict=False) if t is not None]
    accuracy = sum(p == t for p, t in scored) / max(1, len(scored))
    cpu = subprocess.run(
        ["sh", "-c", "lscpu | grep 'Model name' | head -1"], capture_output=True, text=True
    ).stdout
    print(f"# imagerec video vs naive loop — {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, "
          f"{cpu.split(':')[-1].strip() or platform.processor()}, load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"clip: {len(truth)} frames {SIZE[0]}x{SIZE[1]} @ {FPS:g} fps ({args.images} Fashion-MNIST images + 5 photos, "
          f"{HOLD} frames each); model {clf.name} {clf.image_size}x{clf.image_size}x{clf.channels}; median of {args.repeats}")  # fmt: skip
    print("\n| writing MP4 | imagerec video FPS | naive loop FPS | speed-up | runs (imagerec / naive) |")
    print("|---|---|---|---|---|")
    for write, o, n, all_o, all_n in rows:
        runs = f"{', '.join(f'{v:.0f}' for v in all_o)} / {', '.join(f'{v:.1f}' for v in all_n)}"
        print(f"| {'yes' if write else 'no'} | {o:.0f} | {n:.1f} | {o / n:.1f}x | {runs} |")
    print(
        f"\nper-frame accuracy on the Fashion-MNIST frames (no smoothing): {accuracy:.3f} ({len(scored)} frames)"
    )
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
