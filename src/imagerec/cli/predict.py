"""``imagerec predict RUN PATH...``: classify files, folders (recursive) and globs."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import typer

from imagerec.cli.app import app
from imagerec.cli.options import option
from imagerec.data.paths import expand_paths
from imagerec.errors import ImagerecError
from imagerec.settings import RUNTIME, PredictSettings, RaySettings

FORMATS = ("table", "json", "csv")
PROGRESS_MIN = 64  # show a progress bar on a terminal from this many files on


def _chunks(items: list[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@app.command("predict")
def predict(
    run: Path = typer.Argument(..., help="Run directory written by 'imagerec train'."),
    paths: list[str] = typer.Argument(
        ..., help="Image files, folders (recursive) or globs ('imgs/**/*.png')."
    ),
    top_k: int = option(
        PredictSettings, "top_k", "--top-k", "-k", help="How many (label, score) pairs per image."
    ),
    output_format: str = typer.Option("table", "--format", "-f", help="table | json (JSON lines) | csv"),
    batch_size: int = option(PredictSettings, "batch_size", "--batch-size", help="Images per model call."),
    threshold: float = option(
        PredictSettings,
        "threshold",
        "--threshold",
        help="Answer 'unknown' below this confidence (default: the run's calibrated threshold, if any; 0 = off).",
    ),
    runtime: str = typer.Option(
        RUNTIME,
        help="auto (the fastest of keras and the exports that answer like it) | auto-quantized | keras | tflite | tflite-int8 | onnx | savedmodel",
    ),
    ray: bool = typer.Option(
        False, "--ray", help="Classify with a Ray Data actor pool (needs --out); see docs/scaling.md."
    ),
    ray_address: str = option(
        RaySettings,
        "address",
        "--ray-address",
        help="Ray cluster (host:port, ray://host:10001); default: a local instance.",
    ),
    out: Path = typer.Option(None, "--out", help="With --ray: results.parquet or results.jsonl."),
    num_workers: int = option(RaySettings, "num_workers", "--num-workers", help="With --ray: model actors."),
    tta: bool = typer.Option(
        False,
        "--tta",
        help="Average each image with its mirror image (runs trained with flips; 2x the cost).",
    ),
) -> None:
    """Classify images; unreadable files are reported one by one and the exit code is 1 if any failed."""
    from imagerec.classifier import Classifier

    if output_format not in FORMATS:
        raise ImagerecError(f"--format {output_format!r} is not one of {', '.join(FORMATS)}")
    PredictSettings(top_k=top_k, batch_size=batch_size, threshold=threshold).validate()
    RaySettings(num_workers=num_workers, address=ray_address).validate()
    if ray or ray_address or out is not None:
        if tta:
            raise ImagerecError("--tta is not available with --ray; run without --ray, or drop --tta")
        _predict_with_ray(run, paths, out, num_workers, batch_size, top_k, ray_address, runtime, threshold)
        return
    files, missing = expand_paths(paths)
    if not files and not missing:
        raise ImagerecError(
            f"no image files found in {', '.join(paths)}; expected image files, folders or globs"
        )
    clf = Classifier.load(run, runtime=runtime, tta=tta)
    writer = _Writer(output_format, top_k, clf.runtime, runtime, multilabel=clf.task == "multilabel")
    failed = 0
    for item in missing:
        writer.error(item, "not_found", f"{item}: no such file, folder or matching glob")
        failed += 1
    with _progress(len(files)) as advance:
        for chunk in _chunks(files, batch_size):
            for path, result in zip(
                chunk,
                clf.predict(
                    [str(p) for p in chunk],
                    top_k=top_k,
                    batch_size=batch_size,
                    threshold=threshold,
                    errors="return",
                ),
                strict=True,
            ):
                if hasattr(result, "code"):
                    writer.error(str(path), result.code, result.message)
                    failed += 1
                else:
                    writer.result(str(path), result)
            advance(len(chunk))
    writer.close()
    if failed:
        typer.echo(f"imagerec: {failed} of {len(files) + len(missing)} input(s) failed", err=True)
        raise typer.Exit(1)


def _predict_with_ray(run, paths, out, num_workers, batch_size, top_k, address, runtime, threshold) -> None:
    from imagerec.distributed.ray import predict_with_ray

    if out is None:
        raise ImagerecError(
            "--ray writes its results to a file: add --out results.parquet (or results.jsonl)"
        )
    s = predict_with_ray(
        run,
        paths,
        out,
        num_workers=num_workers,
        batch_size=batch_size,
        top_k=top_k,
        address=address,
        runtime=runtime,
        threshold=threshold,
    )
    typer.echo(f"classified {s['images']} image(s), {s['failed']} failed, in {s['seconds']:.1f}s "
               f"({s['images_per_second']:.1f} images/s) with Ray Data; results: {s['out']}", err=True)  # fmt: skip
    if s["failed"]:
        raise typer.Exit(1)


class _progress:
    """A Rich progress bar on stderr when it is a terminal and there are many files; otherwise nothing."""

    def __init__(self, total: int):
        self.total = total
        self.bar = None

    def __enter__(self):
        if self.total >= PROGRESS_MIN and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import Progress

            self.bar = Progress(console=Console(stderr=True), transient=True)
            self.bar.start()
            task = self.bar.add_task("classifying", total=self.total)
            return lambda n: self.bar.advance(task, n)
        return lambda n: None

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()


class _Writer:
    """Formats results as a Rich table (at the end), JSON lines or CSV rows (as they come).

    The runtime that answered is named: a ``runtime`` field in each JSON result, the table's caption, a line on
    stderr after CSV (so that stdout stays plain CSV).
    """

    def __init__(
        self,
        fmt: str,
        top_k: int,
        runtime: str | None = None,
        asked: str | None = None,
        multilabel: bool = False,
    ):
        self.fmt = fmt
        self.multilabel = multilabel  # CSV: a 'labels' column after 'label' (the classes joined by ';')
        self.runtime = runtime
        # ``auto`` may have picked an export: say which runtime answered
        self.answered_by = f"answered by runtime {runtime}" if runtime else ""
        if runtime and asked and asked != runtime:
            self.answered_by += f" (--runtime {asked})"
        self.rows: list[tuple[str, str, str, str]] = []
        self.csv = None
        if fmt == "csv":
            self.csv = csv.writer(sys.stdout)
            labels = ["labels"] if multilabel else []
            self.csv.writerow(["path", "label", *labels, "confidence", "top_k", "ood_score", "error"])

    def result(self, path: str, pred) -> None:
        if self.fmt == "json":
            fields = {k: v for k, v in pred.to_dict().items() if k != "path"}
            sys.stdout.write(json.dumps({"path": path, **fields, "runtime": self.runtime}) + "\n")
        elif self.csv is not None:
            top = ";".join(f"{label}:{score:.4f}" for label, score in pred.top_k)
            ood = "" if pred.ood_score is None else f"{pred.ood_score:.6f}"
            labels = [";".join(pred.labels or [])] if self.multilabel else []
            self.csv.writerow([path, pred.label, *labels, f"{pred.confidence:.6f}", top, ood, ""])
        else:
            top = "  ".join(f"{label} {score:.2f}" for label, score in pred.top_k)
            label = ", ".join(pred.labels) if pred.labels else pred.label  # a multi-label answer: its classes
            if pred.reason:
                label += f" ({pred.reason.replace('_', ' ')})"
            self.rows.append((path, label, f"{pred.confidence:.3f}", top))

    def error(self, path: str, code: str, message: str) -> None:
        if self.fmt == "json":
            sys.stdout.write(json.dumps({"path": path, "error": {"code": code, "message": message}}) + "\n")
        elif self.csv is not None:
            labels = [""] if self.multilabel else []
            self.csv.writerow([path, "", *labels, "", "", "", f"{code}: {message}"])
        else:
            self.rows.append((path, "[red]error[/red]", "", f"{code}: {message}"))

    def close(self) -> None:
        sys.stdout.flush()
        if self.fmt == "csv" and self.answered_by:
            print(f"imagerec: {self.answered_by}", file=sys.stderr)
        if self.fmt != "table":
            return
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        console = Console()
        if not console.is_terminal:
            console = Console(width=max(160, max((len(r[0]) + len(r[3]) + 30 for r in self.rows), default=0)))
        table = Table(caption=self.answered_by or None)
        table.add_column("path", no_wrap=True)
        for name in ("label", "confidence", "top-k"):
            table.add_column(name)
        for path, label, conf, top in self.rows:
            table.add_row(
                escape(path), label if label.startswith("[red]") else escape(label), conf, escape(top)
            )
        console.print(table)
