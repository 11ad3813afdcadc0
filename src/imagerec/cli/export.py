"""``imagerec export | benchmark``: exported artifacts with a parity check, and every runtime measured."""

from __future__ import annotations

from pathlib import Path

import typer

from imagerec.bounds import Bound, require
from imagerec.cli.app import app
from imagerec.cli.options import option
from imagerec.settings import EXPORT_FORMAT, PARITY_IMAGES, BenchmarkSettings

#: ``--parity-images``: a flag that is no setting, so its bound is declared here.
PARITY_IMAGES_BOUND = Bound(ge=1, integer=True)


def _console():
    """Rich console; when piped, wide enough that rows are not wrapped (scripts grep them)."""
    import sys

    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=200)


def _mb(n: int) -> str:
    return f"{n / 2**20:.2f} MB"


@app.command("export")
def export(
    run: Path = typer.Argument(..., help="Run directory written by 'imagerec train'."),
    format: str = typer.Option(EXPORT_FORMAT, "--format", "-f", help="savedmodel | tflite | onnx | openvino | all"),  # noqa: A002
    quantize: str = typer.Option(
        None,
        "--quantize",
        "-q",
        help="none | float16 | dynamic | int8 (float16/dynamic: tflite; int8: tflite, onnx, openvino)",
    ),
    out: Path = typer.Option(
        None,
        "--out",
        "-o",
        help="Export directory (default RUN/exports/<format>[-<quantize>]), or the file itself (model.tflite, "
        "model.onnx; sidecars beside it: model.tflite.labels.json...).",
    ),
    parity_images: int = typer.Option(
        PARITY_IMAGES, "--parity-images", help="Test images compared with the Keras model."
    ),
) -> None:
    """Export RUN, check parity with the Keras model on its test split, publish only when parity passes.

    A failing export is one line naming it; with --format all the others are still published, and the exit code
    is 2 once all were tried.
    """
    from imagerec.classifier import Classifier
    from imagerec.errors import ImagerecError
    from imagerec.export.exporter import ExportFailures, export_records, plan

    require("--parity-images", parity_images, PARITY_IMAGES_BOUND)
    # reject an unknown format/quantization or a bad --out before loading anything
    plan(format, quantize, out)
    clf = Classifier.load(run, runtime="keras")
    try:
        _, records = export_records(clf, format, quantize, out, parity_images=parity_images)
    except ExportFailures as exc:
        if not exc.records:
            raise
        _print_records(run, exc.records, out)
        for line in exc.failures.values():
            typer.echo(f"imagerec: error: {line}", err=True)
        total = len(exc.records) + len(exc.failures)
        raise ImagerecError(
            f"{len(exc.failures)} of {total} exports failed ({', '.join(exc.failures)}); the other "
            f"{len(exc.records)} were published"
        ) from None
    _print_records(run, records, out)


def _print_records(run: Path, records: list[dict], out: Path | None) -> None:
    from rich.table import Table

    table = Table(title=f"exports of {run}")
    from imagerec.export.parity import agreement

    sets = any(r["parity"].get("task") == "multilabel" for r in records)  # a multi-label run: its label sets
    for col in ("export", "size", "input", "label-set agreement" if sets else "top-1 agreement", "max |Δp|",
                "images", "path"):  # fmt: skip
        table.add_column(col)
    for r in records:
        p = r["parity"]
        table.add_row(
            f"{r['format']}" + ("" if r["quantization"] == "none" else f" {r['quantization']}"),
            _mb(r["size_bytes"]), r["input"]["dtype"], f"{agreement(p):.2%}", f"{p['max_abs_prob_diff']:.2g}",
            f"{p['num_images']} {p['split']}", r["path"],
        )  # fmt: skip
    _console().print(table)
    if out is None:
        _print_default_runtime(run)


def _print_default_runtime(run: Path) -> None:
    from imagerec.runtime.exported import RUNTIME_RECORD
    from imagerec.utils import read_json

    record = read_json(run / "exports" / RUNTIME_RECORD)
    timings = ", ".join(f"{name} {ms:.3g} ms" for name, ms in record.get("latency_p50_ms", {}).items())
    how = (
        "measured by 'imagerec benchmark'"
        if record.get("measured_by") == "benchmark"
        else "quick one-image median; 'imagerec benchmark RUN' measures thoroughly"
    )
    typer.echo(f"default runtime (--runtime auto): {record['runtime']} ({timings}; {how})")
    quantized = record.get("quantized_runtime", record["runtime"])
    if quantized != record["runtime"]:
        typer.echo(
            f"fastest quantized runtime (--runtime auto-quantized): {quantized}; 'auto' does not pick it as it "
            "may be less accurate than the Keras model"
        )


def _percent(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.0f}%"


@app.command("benchmark")
def benchmark(
    run: Path = typer.Argument(..., help="Run directory (its exports in RUN/exports are measured too)."),
    export_all: bool = typer.Option(False, "--export", help="First export every format and quantization."),
    runtime: list[str] = typer.Option(None, "--runtime", help="Only these runtimes (repeatable)."),
    rounds: int = option(
        BenchmarkSettings, "rounds", "--rounds", help="Interleaved rounds; figures are medians over rounds."
    ),
) -> None:
    """Latency p50/p99, throughput at batch 1/8/64, size, peak memory and accuracy of every runtime of RUN."""
    from rich.console import Console
    from rich.table import Table

    from imagerec.classifier import Classifier
    from imagerec.export.benchmark import benchmark_run
    from imagerec.export.exporter import export_records

    BenchmarkSettings(rounds=rounds).validate()
    console = Console(stderr=True)
    if export_all:
        export_records(Classifier.load(run, runtime="keras"), "all")
    result = benchmark_run(run, runtimes=runtime or None, rounds=rounds, log=lambda m: console.log(m))
    table = Table(
        title=f"runtimes of {run} ({result['threads']} threads, {result['num_accuracy_images']} {result['split']} images)"
    )
    cols = (
        "runtime",
        "p50 ms",
        "p99 ms",
        "img/s b1",
        "img/s b8",
        "img/s b64",
        "size",
        "peak RSS Δ",
        "accuracy",
        "parity",
        "% peak b1/b64",
    )
    for col in cols:
        table.add_column(col)
    for r in result["runtimes"]:
        acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.4f}"
        table.add_row(
            r["runtime"] + (" *" if r["runtime"] == result["default"] else ""),
            f"{r['latency_p50_ms']:.3f}", f"{r['latency_p99_ms']:.3f}", f"{r['throughput_b1']:.0f}",
            f"{r['throughput_b8']:.0f}", f"{r['throughput_b64']:.0f}", _mb(r["size_bytes"]),
            f"{r['peak_rss_delta_mb']:.1f} MB", acc, "pass" if r["parity_passed"] else "FAIL",
            f"{_percent(r['peak_share_b1'])} / {_percent(r['peak_share_b64'])}",
        )  # fmt: skip
    _console().print(table)
    if result["flops_per_image"]:
        typer.echo(
            f"{result['flops_per_image'] / 1e6:.1f} MFLOPs per image; float32 GEMM peak {result['gemm_peak_gflops']:g} "
            f"GFLOP/s on {result['threads']} threads (% peak = FLOPs x images/s / that peak; int8 can pass 100%)"
        )
    typer.echo(
        f"* default runtime (fastest that answers like the Keras model): {result['default']}; "
        f"wrote {run}/exports/benchmark.json"
    )
    if result["fastest"] != result["default"]:
        typer.echo(f"fastest that passed parity (--runtime auto-quantized): {result['fastest']}")
