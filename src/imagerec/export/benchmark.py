"""``imagerec benchmark RUN``: every runtime of a run, measured side by side.

For the Keras model and each export in ``RUN/exports/``: single-image latency p50/p99 (model call only, on a
preprocessed uint8 image), throughput at batch 1/8/64, artifact size, peak memory, test accuracy, and the share of
the machine's float32 peak each runtime reaches (export/peak.py). Runtimes are
measured in interleaved rounds (each round times every runtime in turn) so that load from other processes on the
machine hits all of them alike; the figures are medians over rounds.

Peak memory is the growth of this process's resident set size (``/proc/self/statm``, sampled every millisecond
by a thread) while the runtime is loaded and answers one batch of 64: it counts the weights, the runtime's arenas
and buffers, not the shared TensorFlow/onnxruntime libraries that are already loaded.

Writes ``RUN/exports/benchmark.json`` and ``RUN/exports/runtime.json``: ``runtime``, the fastest by single-image
p50 of Keras and the exports that answer like it (unquantized, the Keras top-1 on every parity image, and no lower
test accuracy), which ``Classifier.load(run)`` (runtime ``auto``) uses; and ``quantized_runtime``, the fastest
that passed parity, which runtime ``auto-quantized`` uses. A quantized export is never picked without being asked.

``imagerec export`` writes ``runtime.json`` too, from a quick measurement (:func:`quick_default_runtime`: a few
hundred ms per runtime, one image, median), so that ``auto`` serves the fastest runtime right after an export; a
later ``imagerec benchmark`` replaces that record with its thorough one, and an export keeps a benchmark's record
when the benchmark already measured every runtime the export wrote.
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

from imagerec.errors import ImagerecError
from imagerec.export.formats import is_export_dir
from imagerec.export.parity import accuracy, evaluation_images, run_spec
from imagerec.export.peak import gemm_peak, model_flops, peak_share
from imagerec.run import RunDir
from imagerec.runtime import get_runtime, predict_in_batches
from imagerec.runtime.exported import RUNTIME_RECORD, answers_like_keras, open_export_runtime, verify_export
from imagerec.settings import BenchmarkSettings
from imagerec.utils import atomic_write_json, read_json

BATCH_SIZES = (1, 8, 64)
ACCURACY_BATCH = 64
QUICK_SECONDS = 0.3  # per runtime, for the measurement ``imagerec export`` makes


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


def quick_latency(
    fns: dict[str, Callable], image: np.ndarray, seconds: float = QUICK_SECONDS, rounds: int = 3
) -> dict[str, float]:
    """Median single-image latency (ms) of each callable over ``seconds``, in ``rounds`` interleaved rounds."""
    for fn in fns.values():  # warm-up: tracing, arena allocation
        fn(image)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name].extend(_time_calls(fn, image, seconds / rounds))
    return {name: round(float(np.median(s)) * 1000, 4) for name, s in samples.items()}


def write_default_runtime(
    run_path: Path,
    latency_ms: dict[str, float],
    measured_by: str,
    like_keras: set[str] | frozenset = frozenset(),
) -> str:
    """Write ``RUN/exports/runtime.json``; return the runtime ``auto`` picks.

    Args:
        latency_ms: single-image p50 of Keras and of every export that passed parity.
        like_keras: the exports among them that answer like Keras (:func:`answers_like_keras`).
    """
    accurate = {n: ms for n, ms in latency_ms.items() if n == "keras" or n in like_keras}
    fastest = min(accurate, key=accurate.__getitem__) if accurate else "keras"
    record: dict[str, Any] = {
        "runtime": fastest,
        "why": "fastest single-image p50 of keras and the exports that answer like it (unquantized, 100% top-1 "
        "parity); quantized exports only with --runtime auto-quantized",
        "quantized_runtime": min(latency_ms, key=latency_ms.__getitem__) if latency_ms else "keras",
        "like_keras": sorted(accurate),
        "measured_by": measured_by,
        "latency_p50_ms": dict(sorted(latency_ms.items(), key=lambda kv: kv[1])),
    }
    if measured_by == "benchmark":
        record["benchmark"] = "benchmark.json"
    (Path(run_path) / "exports").mkdir(exist_ok=True)
    atomic_write_json(Path(run_path) / "exports" / RUNTIME_RECORD, record)
    return fastest


def quick_default_runtime(
    run_path: Path, keras_fn: Callable, written: list[str], image: np.ndarray
) -> dict[str, Any] | None:
    """After an export: time Keras and every passing export of the run briefly, and record the fastest.

    ``written`` names the exports just made (they passed parity, or they would not exist). Older exports in
    ``RUN/exports`` are timed too when they still verify, so a second export does not hide a faster first one.
    A ``runtime.json`` written by ``imagerec benchmark`` that measured all of ``written`` is kept (returns None).

    Returns:
        The ``runtime.json`` record written, or None when a benchmark's record was kept.
    """
    record_path = Path(run_path) / "exports" / RUNTIME_RECORD
    try:
        previous = read_json(record_path)
    except (OSError, ValueError):
        previous = {}
    if previous.get("measured_by") == "benchmark" and set(written) <= set(previous.get("latency_p50_ms", {})):
        return None
    fns: dict[str, Callable] = {"keras": keras_fn}
    like_keras = set()
    for name in _candidates(Path(run_path), None)[1:]:
        export_dir = Path(run_path) / "exports" / name
        try:
            record = verify_export(export_dir)
            if not record["parity"]["passed"]:
                continue
            fns[name] = open_export_runtime(export_dir, name)[2]
        except (ImagerecError, KeyError, TypeError):
            if name in written:
                raise
            continue
        if answers_like_keras(record):
            like_keras.add(name)
    write_default_runtime(Path(run_path), quick_latency(fns, image[:1]), "export", like_keras)
    return read_json(record_path)


def _candidates(run_path: Path, only: list[str] | None) -> list[str]:
    exports = run_path / "exports"
    names = ["keras"] + (
        sorted(p.name for p in exports.iterdir() if is_export_dir(p)) if exports.is_dir() else []
    )
    return [n for n in names if not only or n in only]


def benchmark_run(
    run: str | os.PathLike,
    runtimes: list[str] | None = None,
    rounds: int = BenchmarkSettings.rounds,
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
    BenchmarkSettings(rounds=rounds).validate()
    log = log or (lambda _msg: None)
    run_dir = RunDir(run).require()
    run_path, spec = run_dir.path, run_spec(run_dir)
    size, channels = spec["image_size"], spec["channels"]
    images, labels, split = evaluation_images(run_dir, accuracy_images)
    thresholds = spec.get("thresholds")  # multi-label: accuracy = identical label sets at the run's thresholds
    if not len(images):
        images = np.random.default_rng(0).integers(0, 256, (64, size, size, channels), np.uint8)
    batch64 = np.resize(images, (64, *images.shape[1:]))
    rows: dict[str, dict[str, Any]] = {}
    fns: dict[str, Callable] = {}
    like_keras: set[str] = set()
    names = _candidates(run_path, runtimes)
    for name in names:  # refuse a modified or incomplete export before measuring anything
        if name != "keras":
            verify_export(run_path / "exports" / name)
    threads = int(os.environ.get("IMAGEREC_NUM_THREADS", 0)) or os.cpu_count()
    log("counting FLOPs per image and measuring the float32 GEMM peak")
    flops = model_flops(run_dir.load_model(), size, channels)
    peak = gemm_peak(threads)
    for name in names:
        log(f"loading {name}")
        with PeakRSS() as mem:
            if name == "keras":
                info = {"image_size": size, "channels": channels, "run_dir": run_path}
                fn = get_runtime("keras")(run_dir.load_model(), info)
                nbytes, passed = run_dir.model.stat().st_size, True
            else:
                record = verify_export(run_path / "exports" / name)
                fn = open_export_runtime(run_path / "exports" / name, name)[2]
                nbytes, passed = record["size_bytes"], bool(record["parity"]["passed"])
                if answers_like_keras(record):
                    like_keras.add(name)
            fn(batch64)
        fns[name] = fn
        probs = predict_in_batches(fn, images, ACCURACY_BATCH) if len(labels) else None
        rows[name] = {
            "runtime": name,
            "size_bytes": int(nbytes),
            "peak_rss_delta_mb": round(mem.delta / 2**20, 1),
            "accuracy": accuracy(probs, labels, thresholds) if probs is not None else None,
            "parity_passed": passed,
        }
    for name, figures in measure(fns, images, rounds, seconds, log).items():
        rows[name].update(figures)
        rows[name]["peak_share_b1"] = peak_share(flops, 1000.0 / figures["latency_p50_ms"], peak)
        rows[name]["peak_share_b64"] = peak_share(flops, figures["throughput_b64"], peak)
    table = sorted(rows.values(), key=lambda r: r["latency_p50_ms"])
    passing = [r for r in table if r["parity_passed"]]
    keras_accuracy = rows.get("keras", {}).get("accuracy")
    if (
        keras_accuracy is not None
    ):  # measured on more images than parity: a lower accuracy rules an export out
        like_keras = {n for n in like_keras if (rows[n]["accuracy"] or 0.0) >= keras_accuracy}
    for row in table:
        row["like_keras"] = row["runtime"] == "keras" or row["runtime"] in like_keras
    result = {
        "run": str(run_path),
        "split": split,
        "num_accuracy_images": int(len(labels)),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "flops_per_image": flops,
        "gemm_peak_gflops": round(peak / 1e9, 1),
        "peak_share": "FLOPs per image x images/s (p50 latency at batch 1; throughput at batch 64) / the float32 "
        "GEMM peak measured on the same threads (export/peak.py); int8 runtimes can pass 1.0",
        "memory": "peak RSS growth while loading + one batch of 64 (/proc/self/statm sampled every 1 ms)",
        "latency": "model call on one preprocessed image (decode excluded); medians over interleaved rounds",
        "runtimes": table,
        "fastest": passing[0]["runtime"] if passing else "keras",
    }
    (run_path / "exports").mkdir(exist_ok=True)
    latency = {r["runtime"]: r["latency_p50_ms"] for r in passing}
    result["default"] = write_default_runtime(run_path, latency, "benchmark", like_keras)
    atomic_write_json(run_path / "exports" / "benchmark.json", result)
    return result
