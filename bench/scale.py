"""Batch prediction: Ray Data (actor pool) vs single-process ``imagerec predict``, on the same files, side by side.

Measures, in interleaved rounds (each round runs every variant once, so the other jobs sharing the machine slow all
variants alike; figures are medians):

* ``predict-cli``: ``imagerec predict RUN DIR --format json`` in a fresh process (end to end: start-up, model load,
  decode, inference, output) -- what a user runs today;
* ``predict-inproc``: ``Classifier.predict`` on the same files in this process, model already loaded (the steady
  single-process rate: no start-up);
* ``ray-N``: ``predict_with_ray(RUN, [DIR], out.parquet, num_workers=N)`` end to end as a one-off job: the local
  Ray instance's start-up (``ray.init``) counted, then actor start-up + model load in each actor, decode,
  inference, Parquet;
* ``ray-N warm``: the same job again on the instance already up (what each job costs on a long-lived cluster).

Projection: ``per-worker rate x workers``, where the per-worker rate is the steady ``predict-inproc`` rate of one
process on one core. Assumptions: one actor per core (or per GPU), images on storage every node reads at least that
fast, the driver-side Parquet writer not the bottleneck (write a directory per node past ~10^4 images/s), and
actor start-up (~model load) amortised over a long job.

    python bench/scale.py --images 800 --rounds 3 --workers 1 2
    python bench/scale.py --run runs/fmnist --source /data/photos    # your own run and folder
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _prepare(args, work: Path) -> tuple[Path, Path]:
    import imagerec
    from imagefixtures import write_colour_dataset

    source = (
        Path(args.source)
        if args.source
        else write_colour_dataset(work / "images", per_class=args.images // 3, size=args.size, seed=11)
    )
    if args.run:
        return Path(args.run), source
    log("training a tiny run to predict with (2 epochs)")
    data = write_colour_dataset(work / "train", per_class=20, size=args.size, seed=1)
    run = imagerec.train(data, out=work / "run", epochs=2, batch_size=16, seed=0, log=lambda *_: None)
    return run.path, source


def _cli(run: Path, source: Path, batch: int) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "imagerec", "predict", str(run), str(source), "--format", "json", "--batch-size", str(batch)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run")
    parser.add_argument("--source")
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--json", type=Path, help="Also write the figures as JSON here.")
    args = parser.parse_args()

    from imagerec.classifier import Classifier
    from imagerec.data.paths import expand_paths
    from imagerec.distributed.ray import init_ray, predict_with_ray

    work = Path(tempfile.mkdtemp(prefix="imagerec-scale-"))
    run, source = _prepare(args, work)
    files = [str(p) for p in expand_paths([str(source)])[0]]
    n = len(files)
    clf = Classifier.load(run)
    clf.predict(files[: args.batch_size], batch_size=args.batch_size)  # warm-up (traces the function)
    times: dict[str, list[float]] = {}
    starts: list[float] = []
    for r in range(args.rounds):
        log(f"round {r + 1}/{args.rounds} on {n} images")
        times.setdefault("predict-cli", []).append(_cli(run, source, args.batch_size))
        t0 = time.perf_counter()
        clf.predict(files, batch_size=args.batch_size, errors="return")
        times.setdefault("predict-inproc", []).append(time.perf_counter() - t0)
        for w in args.workers:
            # a one-off job pays the local Ray instance's start-up: counted in "ray-N", then the same job again on
            # the instance already up ("ray-N warm": what a long-lived cluster costs per job)
            t0 = time.perf_counter()
            ray = init_ray(None, num_cpus=max(2, w))
            starts.append(time.perf_counter() - t0)
            s = predict_with_ray(run, [str(source)], work / f"out-{w}.parquet", num_workers=w, batch_size=args.batch_size)
            times.setdefault(f"ray-{w}", []).append(time.perf_counter() - t0)
            assert s["images"] == n, s
            s = predict_with_ray(run, [str(source)], work / f"out-{w}.parquet", num_workers=w, batch_size=args.batch_size)
            times.setdefault(f"ray-{w} warm", []).append(s["seconds"])
            ray.shutdown()
    ray_start = statistics.median(starts)
    rows = {k: {"median_s": round(statistics.median(v), 2), "images_per_s": round(n / statistics.median(v), 1), "runs_s": [round(x, 2) for x in v]}
            for k, v in times.items()}  # fmt: skip
    per_worker = rows["predict-inproc"]["images_per_s"]
    projection = {w: round(per_worker * w, 1) for w in (1, 2, 4, 8, 16, 32)}
    result = {"images": n, "image_size": args.size, "batch_size": args.batch_size, "rounds": args.rounds,
              "ray_init_s": round(ray_start, 2), "variants": rows, "projection_images_per_s": projection,
              "cpu": _cpu(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(_markdown(result))
    shutil.rmtree(work, ignore_errors=True)


def _cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        name = next(ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name"))
    except (OSError, StopIteration):
        name = "unknown"
    return f"{name}, {os.cpu_count()} logical CPUs"


def _markdown(r: dict) -> str:
    lines = [f"{r['images']} images {r['image_size']}x{r['image_size']}, batch {r['batch_size']}, median of {r['rounds']} "
             f"interleaved rounds; {r['cpu']}; {r['date']}; ray-N counts the local Ray instance's start-up (median "
             f"{r['ray_init_s']} s), ray-N warm runs on the instance already up", "",
             "| variant | median s | images/s | runs (s) |", "|---|---:|---:|---|"]  # fmt: skip
    for k, v in r["variants"].items():
        lines.append(f"| {k} | {v['median_s']} | {v['images_per_s']} | {', '.join(map(str, v['runs_s']))} |")
    lines += ["", "| workers | projected images/s (steady single-process rate x workers) |", "|---:|---:|"]
    lines += [f"| {w} | {v} |" for w, v in r["projection_images_per_s"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
