"""``imagerec benchmark RUN``: every runtime of a run, measured side by side.

For the Keras model and each export in ``RUN/exports/``: single-image latency p50/p99 (model call only, on a
preprocessed uint8 image), throughput at batch 1/8/64, artifact size, peak memory and test accuracy. Runtimes are
measured in interleaved rounds (each round times every runtime in turn) so that load from other processes on the
machine hits all of them alike; the figures are medians over rounds.

Peak memory is the growth of this process's resident set size (``/proc/self/statm``, sampled every millisecond
by a thread) while the runtime is loaded and answers one batch of 64: it counts the weights, the runtime's arenas
and buffers, not the shared TensorFlow/onnxruntime libraries that are already loaded.

Writes ``RUN/exports/benchmark.json`` and ``RUN/exports/runtime.json`` (the fastest runtime by single-image p50
whose export passed parity; ``Classifier.load(run)`` then uses it by default).
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from imagerec.export.formats import RUNTIME_RECORD, is_export_dir, open_export_runtime, verify_export
from imagerec.export.parity import accuracy, batched, evaluation_images
from imagerec.utils import atomic_write_json

BATCH_SIZES = (1, 8, 64)


def _rss() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: fall back to the (monotonic) peak
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakRSS:
    """Context manager: peak RSS growth (bytes) over its body, sampled by a thread."""

    def __enter__(self) -> PeakRSS:
        gc.collect()
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())
        self.delta = self.peak - self.base


def _time_calls(fn: Callable, x: np.ndarray, seconds: float, min_calls: int = 3) -> list[float]:
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < min_calls or time.perf_counter() < deadline:
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return times


def measure(
    fns: dict[str, Callable],
    images: np.ndarray,
    rounds: int = 5,
    seconds: float = 0.3,
    log: Callable | None = None,
) -> dict[str, dict[str, float]]:
    """Latency p50/p99 (ms, one image) and throughput (images/s at batch 1/8/64) of each callable.

    Interleaved: every round times every callable in turn; throughput is the median over rounds of
    ``batch / median call time``, latency percentiles pool the single-image calls of all rounds.
    """
    samples: dict[str, dict[str, list[float]]] = {
        n: {"lat": [], **{f"b{b}": [] for b in BATCH_SIZES}} for n in fns
    }
    batches = {b: np.resize(images, (b, *images.shape[1:])) for b in BATCH_SIZES}
    for r in range(rounds):
        if log:
            log(f"round {r + 1}/{rounds}")
        for name, fn in fns.items():
            samples[name]["lat"].extend(_time_calls(fn, images[:1], seconds))
            for b, x in batches.items():
                samples[name][f"b{b}"].append(
                    b / float(np.median(_time_calls(fn, x, seconds / len(BATCH_SIZES))))
                )
    out = {}
    for name, s in samples.items():
        lat = np.asarray(s["lat"]) * 1000
        out[name] = {
            "latency_p50_ms": round(float(np.percentile(lat, 50)), 4),
            "latency_p99_ms": round(float(np.percentile(lat, 99)), 4),
            **{f"throughput_b{b}": round(float(np.median(s[f"b{b}"])), 1) for b in BATCH_SIZES},
        }
    return out


def _candidates(run_path: Path, only: list[str] | None) -> list[str]:
    exports = run_path / "exports"
    names = ["keras"] + (
        sorted(p.name for p in exports.iterdir() if is_export_dir(p)) if exports.is_dir() else []
    )
    return [n for n in names if not only or n in only]


def benchmark_run(
    run: str | os.PathLike,
    runtimes: list[str] | None = None,
    rounds: int = 5,
    seconds: float = 0.3,
    accuracy_images: int = 2000,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure every runtime of ``run`` (Keras + its exports) and write ``benchmark.json`` / ``runtime.json``.

    Args:
        run: a run directory (export first with ``imagerec export RUN --format all`` to compare them all).
        runtimes: restrict to these names (``keras``, ``tflite``, ``tflite-int8``, ...).
        rounds: interleaved measuring rounds; figures are medians over rounds.
        seconds: time spent per runtime, per measurement, per round.
        accuracy_images: at most this many test images for accuracy.

    Returns:
        The ``benchmark.json`` record: ``{"runtimes": [...], "fastest": name, "default": name, ...}``.
    """
    from imagerec.classifier import Classifier

    log = log or (lambda _msg: None)
    keras_clf = Classifier.load(run, runtime="keras")
    run_path = keras_clf.run_dir.path
    images, labels, split = evaluation_images(keras_clf, accuracy_images)
    if not len(images):
        rng = np.random.default_rng(0)
        images = rng.integers(
            0, 256, (64, keras_clf.image_size, keras_clf.image_size, keras_clf.channels), np.uint8
        )
    batch64 = np.resize(images, (64, *images.shape[1:]))
    rows: dict[str, dict[str, Any]] = {}
    fns: dict[str, Callable] = {}
    names = _candidates(run_path, runtimes)
    for name in names:  # refuse a modified or incomplete export before measuring anything
        if name != "keras":
            verify_export(run_path / "exports" / name)
    for name in names:
        log(f"loading {name}")
        with PeakRSS() as mem:
            if name == "keras":
                fn, size, passed = keras_clf._run, keras_clf.run_dir.model.stat().st_size, True
            else:
                record = verify_export(run_path / "exports" / name)
                fn = open_export_runtime(run_path / "exports" / name, name)[2]
                size, passed = record["size_bytes"], bool(record["parity"]["passed"])
            fn(batch64)
        fns[name] = fn
        probs = batched(fn, images) if len(labels) else None
        rows[name] = {
            "runtime": name,
            "size_bytes": int(size),
            "peak_rss_delta_mb": round(mem.delta / 2**20, 1),
            "accuracy": accuracy(probs, labels) if probs is not None else None,
            "parity_passed": passed,
        }
    for name, figures in measure(fns, images, rounds, seconds, log).items():
        rows[name].update(figures)
    table = sorted(rows.values(), key=lambda r: r["latency_p50_ms"])
    passing = [r for r in table if r["parity_passed"]]
    fastest = passing[0]["runtime"] if passing else "keras"
    result = {
        "run": str(run_path),
        "split": split,
        "num_accuracy_images": int(len(labels)),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpu_count": os.cpu_count(),
        "threads": int(os.environ.get("IMAGEREC_NUM_THREADS", 0)) or os.cpu_count(),
        "memory": "peak RSS growth while loading + one batch of 64 (/proc/self/statm sampled every 1 ms)",
        "latency": "model call on one preprocessed image (decode excluded); medians over interleaved rounds",
        "runtimes": table,
        "fastest": fastest,
        "default": fastest,
    }
    (run_path / "exports").mkdir(exist_ok=True)
    atomic_write_json(run_path / "exports" / "benchmark.json", result)
    atomic_write_json(
        run_path / "exports" / RUNTIME_RECORD,
        {
            "runtime": fastest,
            "why": "fastest single-image p50 that passed parity",
            "benchmark": "benchmark.json",
        },
    )
    return result
