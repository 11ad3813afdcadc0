"""Runtimes side by side: Keras vs SavedModel vs LiteRT (float32/float16/dynamic/int8) vs ONNX Runtime.

Two tables:

1. **Fashion-MNIST** (the default ``imagerec-cnn`` run, 28x28 grey): ``imagerec export RUN --format all`` (each
   export parity-checked on 1000 test images), then ``imagerec benchmark`` (latency, throughput, size, peak memory,
   accuracy on the 10k official test images) -- the figures behind "int8 loses <= 1 point".
2. **MobileNetV3Small (and imagerec-cnn, relu-only) at 224x224x3** (``weights=none``, 10 classes: speed only), converted with the same code
   (``imagerec.export.tflite.convert``, ``onnx.export_artifact``) and timed with the same interleaved
   :func:`imagerec.export.benchmark.measure` -- the figures behind "int8 LiteRT >= 2x faster than float32".

Every runtime is timed in interleaved rounds (each round measures each runtime in turn), so that the other
processes sharing the machine slow all runtimes alike; figures are medians.

    python bench/runtimes.py --fm-run /tmp/fm-run          # reuse a run (copied; the original is not touched)
    python bench/runtimes.py                                # trains one first if /tmp/fm-run does not exist:
        imagerec data builtin fashion-mnist /tmp/fm && imagerec train /tmp/fm --out /tmp/fm-run --epochs 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

RUN_FILES = ("model.keras", "model.keras.sha256.json", "labels.json", "config.json", "manifest.csv", "metrics.json",
             "calibration.json")  # fmt: skip


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def fashion_mnist(fm_run: Path, work: Path, rounds: int) -> dict:
    from imagerec import Classifier
    from imagerec.export.benchmark import benchmark_run
    from imagerec.export.exporter import export_records

    if not (fm_run / "model.keras").exists():
        log(f"no run at {fm_run}: training one (2 epochs)")
        subprocess.run(["imagerec", "data", "builtin", "fashion-mnist", "/tmp/fm"], check=True)
        subprocess.run(["imagerec", "train", "/tmp/fm", "--out", str(fm_run), "--epochs", "2"], check=True)
    run = work / "fm-run"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    for name in RUN_FILES:
        if (fm_run / name).exists():
            shutil.copy2(fm_run / name, run / name)
    log("exporting Fashion-MNIST run to every format")
    t0 = time.perf_counter()
    _, records = export_records(Classifier.load(run, runtime="keras"), "all")
    export_s = time.perf_counter() - t0
    log("benchmarking Fashion-MNIST runtimes")
    result = benchmark_run(run, rounds=rounds, accuracy_images=10_000, log=log)
    result["export_seconds"] = round(export_s, 1)
    result["parity"] = {r["path"].rsplit("/", 1)[-1]: r["parity"] for r in records}
    return result


def fit_batchnorm_statistics(model, images) -> None:
    """Set every BatchNorm's moving mean/variance to the statistics of ``images`` (no weight is trained).

    A freshly initialised network keeps mean 0 / variance 1, so its activations shrink or blow up layer after layer;
    int8 calibration then produces scales that XNNPACK refuses (its ADD needs input/output scale ratios within
    [2^-10, 2^8)), and the int8 graph falls apart into many delegate partitions that a trained network would not
    have. Re-estimating the statistics, as done after weight averaging (``torch.optim.swa_utils.update_bn``), gives
    the activation ranges of a trained network without training it.
    """
    import keras

    layers = [
        layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)
    ]
    saved = [layer.momentum for layer in layers]
    for layer in layers:
        layer.momentum = 0.0  # the next training-mode call stores this batch's statistics
    model(images.astype("float32"), training=True)
    for layer, momentum in zip(layers, saved, strict=True):
        layer.momentum = momentum


def delegate_partitions(path: Path) -> int:
    """How many XNNPACK partitions the graph is cut into (1-2 when the delegate takes every op that matters)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    return sum(op["op_name"] == "DELEGATE" for op in it._get_ops_details())


def speed_table(work: Path, rounds: int, model_name: str = "mobilenetv3small") -> dict:
    import keras
    import numpy as np

    from imagerec.export import onnx as onnx_export
    from imagerec.export import openvino as openvino_export
    from imagerec.export import tflite
    from imagerec.export.benchmark import PeakRSS, measure
    from imagerec.export.peak import gemm_peak, model_flops, peak_share
    from imagerec.models.registry import build_model
    from imagerec.runtime.keras import KerasRuntime

    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(0)
    model = build_model(model_name, 224, 3, 10)
    spec = {"image_size": 224, "channels": 3, "resize": "stretch", "labels": [f"c{i}" for i in range(10)]}
    rng = np.random.default_rng(0)
    # smooth random images (low-frequency noise upsampled) as calibration and timing input
    images = np.clip(np.kron(rng.normal(128, 60, (32, 28, 28, 3)), np.ones((1, 8, 8, 1))), 0, 255).astype(
        np.uint8
    )
    fit_batchnorm_statistics(model, images)
    folder = work / model_name
    folder.mkdir(parents=True, exist_ok=True)
    fns, sizes, memory = {}, {}, {}
    with PeakRSS() as mem:
        fns["keras"] = KerasRuntime(model, 224, 3)
        fns["keras"](images[:8])
    memory["keras"], sizes["keras"] = mem.delta, sum(w.size * 4 for w in model.get_weights())
    for q in ("none", "float16", "dynamic", "int8"):
        name = "tflite" if q == "none" else f"tflite-{q}"
        log(f"converting {model_name} -> {name}")
        path = folder / f"{name}.tflite"
        path.write_bytes(tflite.convert(model, spec, q, images))
        with PeakRSS() as mem:
            fns[name] = tflite.Runtime(path)
            fns[name](images[:8])
        memory[name], sizes[name] = mem.delta, path.stat().st_size
    for name, module, q, artifact in (
        ("onnx", onnx_export, "none", "model.onnx"),
        ("onnx-int8", onnx_export, "int8", "model-int8.onnx"),
        ("openvino", openvino_export, "none", "openvino_model"),
        ("openvino-int8", openvino_export, "int8", "openvino_model-int8"),
    ):
        log(f"converting {model_name} -> {name}")
        path = folder / artifact
        shutil.rmtree(path, ignore_errors=True)
        module.export_artifact(model, spec, q, path, images)
        with PeakRSS() as mem:
            fns[name] = module.Runtime(path)
            fns[name](images[:8])
        memory[name] = mem.delta
        sizes[name] = path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.iterdir())
    ref = fns["tflite"](images)
    flops, peak = (
        model_flops(model, 224, 3),
        gemm_peak(int(os.environ.get("IMAGEREC_NUM_THREADS", 0)) or None),
    )
    rows = []
    log(f"timing {model_name} runtimes")
    for name, figures in measure(fns, images, rounds=rounds, seconds=1.0, log=log).items():
        probs = fns[name](images)
        rows.append({
            "runtime": name, **figures, "size_bytes": int(sizes[name]),
            "peak_rss_delta_mb": round(memory[name] / 2**20, 1),
            "top1_agreement_vs_float32": round(float(np.mean(probs.argmax(1) == ref.argmax(1))), 3),
            "delegate_partitions": delegate_partitions(folder / f"{name}.tflite") if name.startswith("tflite") else None,
            "peak_share_b1": peak_share(flops, 1000.0 / figures["latency_p50_ms"], peak),
        })  # fmt: skip
    return {
        "flops_per_image": flops,
        "gemm_peak_gflops": round(peak / 1e9, 1),
        "model": f"{model_name} 224x224x3, weights=none with BatchNorm statistics fitted to the images, 10 classes",
        "runtimes": sorted(rows, key=lambda r: r["latency_p50_ms"]),
    }


def speed_summary(runtimes: list[dict]) -> dict:
    """Each engine's int8 against its own float32 (batch 1, p50), and the fastest int8 against the fastest float32."""
    rows = {r["runtime"]: r for r in runtimes}
    p50 = lambda name: rows[name]["latency_p50_ms"]  # noqa: E731
    floats = [n for n in ("tflite", "onnx", "openvino", "keras") if n in rows]
    int8s = [n for n in rows if n.endswith("-int8")]
    best_float, best_int8 = min(floats, key=p50), min(int8s, key=p50)
    return {
        **{
            f"{n}_int8_vs_float32_p50": round(p50(n) / p50(f"{n}-int8"), 2)
            for n in floats
            if f"{n}-int8" in rows
        },
        "fastest_float32": best_float,
        "fastest_int8": best_int8,
        "fastest_int8_vs_fastest_float32_p50": round(p50(best_float) / p50(best_int8), 2),
        "fastest_int8_top1_agreement": rows[best_int8]["top1_agreement_vs_float32"],
    }


def markdown(title: str, rows: list[dict], extra: tuple[str, ...]) -> str:
    head = [
        "runtime",
        "p50 ms",
        "p99 ms",
        "img/s b1",
        "img/s b8",
        "img/s b64",
        "size MB",
        "peak RSS Δ MB",
        *extra,
    ]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["runtime"], f"{r['latency_p50_ms']:.3f}", f"{r['latency_p99_ms']:.3f}", f"{r['throughput_b1']:.0f}",
                 f"{r['throughput_b8']:.0f}", f"{r['throughput_b64']:.0f}", f"{r['size_bytes'] / 2**20:.2f}",
                 f"{r['peak_rss_delta_mb']:.1f}"]  # fmt: skip
        for key in extra:
            value = r.get(key)
            cells.append("-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fm-run", type=Path, default=Path("/tmp/fm-run"))
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "imagerec-bench-runtimes")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", choices=("fashion-mnist", "speed"), default=None)
    parser.add_argument(
        "--speed-models",
        default="mobilenetv3small,imagerec-cnn",
        help="Registry models timed at 224x224x3 (comma-separated).",
    )
    parser.add_argument("--json", type=Path, default=None, help="Also write the figures here.")
    args = parser.parse_args()
    out: dict = {
        "machine": os.uname().machine,
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    if args.only in (None, "fashion-mnist"):
        fm = fashion_mnist(args.fm_run, args.work, args.rounds)
        out["fashion_mnist"] = fm
        rows = {r["runtime"]: r for r in fm["runtimes"]}
        fastest = min(r["latency_p50_ms"] for r in fm["runtimes"])
        out["fm_summary"] = {
            "int8_accuracy_loss_points": round(
                100 * (rows["keras"]["accuracy"] - rows["tflite-int8"]["accuracy"]), 2
            ),
            "default_runtime": fm["default"],
            "default_vs_fastest_p50": round(rows[fm["default"]]["latency_p50_ms"] / fastest, 2),
            "keras_vs_fastest_p50": round(rows["keras"]["latency_p50_ms"] / fastest, 2),
        }
        print(
            markdown(
                f"Fashion-MNIST imagerec-cnn ({fm['num_accuracy_images']} test images)",
                fm["runtimes"],
                ("accuracy",),
            )
        )
        print(json.dumps(out["fm_summary"]))
    if args.only in (None, "speed"):
        for model_name in args.speed_models.split(","):
            table = speed_table(args.work, args.rounds, model_name)
            rows = {r["runtime"]: r for r in table["runtimes"]}
            table["summary"] = speed_summary(table["runtimes"])
            out[model_name] = table
            print(
                markdown(
                    table["model"],
                    table["runtimes"],
                    ("top1_agreement_vs_float32", "delegate_partitions", "peak_share_b1"),
                )
            )
            print(
                json.dumps(table["summary"] | {k: table[k] for k in ("flops_per_image", "gemm_peak_gflops")})
            )
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
