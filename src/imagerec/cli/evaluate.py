"""``imagerec evaluate | report | explain | compare | calibrate`` and ``imagerec data issues``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from imagerec.cli.app import app, data_app
from imagerec.cli.options import option
from imagerec.errors import ImagerecError
from imagerec.settings import CalibrateSettings, EvaluateSettings, IssuesSettings, default_of


def _console():
    from rich.console import Console

    return Console()


def _print_multilabel(metrics: dict[str, Any], run: str) -> None:
    """A multi-label evaluation: per-class precision, recall, F1, AP and threshold, then the averages."""
    from rich.table import Table

    from imagerec.evaluation.multilabel import report_rows

    table = Table(title=f"{run}: {metrics['num_images']} images from {metrics.get('source')} (multi-label)")
    header, rows = report_rows(metrics)
    for col in header:
        table.add_column(col, justify="left" if col == "class" else "right")
    for i, row in enumerate(rows):
        if i == len(metrics["per_class"]):
            table.add_section()
        table.add_row(*("" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v) for v in row))
    console = _console()
    console.print(table)
    console.print(
        f"macro F1 {metrics['macro']['f1']:.4f}   micro F1 {metrics['micro']['f1']:.4f}   mAP {metrics['mAP']:.4f}   "
        f"subset accuracy {metrics['subset_accuracy']:.4f}   Hamming loss {metrics['hamming_loss']:.4f}"
    )


def _print_metrics(metrics: dict[str, Any], run: str) -> None:
    from rich.table import Table

    if metrics.get("task") == "multilabel":
        return _print_multilabel(metrics, run)

    table = Table(title=f"{run}: {metrics['num_images']} images from {metrics.get('source')}")
    for col in ("class", "precision", "recall", "F1", "support"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for name, row in metrics["per_class"].items():
        style = "red" if row["support"] and row["f1"] < 0.5 else None
        table.add_row(
            name,
            f"{row['precision']:.4f}",
            f"{row['recall']:.4f}",
            f"{row['f1']:.4f}",
            str(row["support"]),
            style=style,
        )
    table.add_section()
    for avg in ("macro", "weighted"):
        m = metrics[avg]
        table.add_row(
            f"{avg} avg",
            f"{m['precision']:.4f}",
            f"{m['recall']:.4f}",
            f"{m['f1']:.4f}",
            str(metrics["num_images"]),
        )
    console = _console()
    console.print(table)
    auc = metrics.get("roc_auc_ovr")
    console.print(
        f"accuracy {metrics['accuracy']:.4f}   top-{metrics['top_k']} accuracy {metrics['top_k_accuracy']:.4f}   "
        f"ECE {metrics['ece']:.4f}   ROC AUC (OvR) {'n/a' if auc is None else format(auc, '.4f')}"
    )
    if metrics.get("skipped_images"):
        console.print(f"[yellow]skipped {metrics['skipped_images']} undecodable image(s)[/yellow]")
    if ood := metrics.get("ood"):
        ours = "n/a (no embedding reference)" if ood["auroc"] is None else (
            f"AUROC {ood['auroc']:.4f}, FPR@95%TPR {ood['fpr_at_95_tpr']:.4f} ({ood['method']})"
        )  # fmt: skip
        console.print(
            f"out-of-distribution ({ood['num_images']} images of {ood['source']}): {ours}; max-softmax baseline "
            f"AUROC {ood['msp_auroc']:.4f}, FPR@95%TPR {ood['msp_fpr_at_95_tpr']:.4f}; answered 'unknown': "
            f"{ood['ood_answered_unknown']:.1%} of them, {ood['in_distribution_answered_unknown']:.1%} of the test images"
        )


@app.command("evaluate")
def evaluate(
    run: Path = typer.Argument(..., help="Run directory written by 'imagerec train'."),
    data: str = typer.Option(
        None, "--data", help="Another dataset with the same class names (default: the run's split)."
    ),
    split: str = option(
        EvaluateSettings, "split", "--split", help="test | val (| train): which part of the run's split."
    ),
    top_k: int = option(EvaluateSettings, "top_k", "--top-k", help="k of the top-k accuracy."),
    as_json: bool = typer.Option(False, "--json", help="Print metrics.json instead of the table."),
    tta: bool = typer.Option(
        False,
        "--tta",
        help="Average each image with its mirror image (runs trained with flips; 2x the cost).",
    ),
    ood: str = typer.Option(
        None, "--ood", help="Folder (or builtin:NAME) of images of none of the classes: how well they are told apart."
    ),
) -> None:
    """Metrics, pictures and report.html of RUN on its held-out split (written to RUN/evaluation/)."""
    from imagerec.classifier import evaluate as evaluate_run

    metrics = evaluate_run(run, data=data, split=split, top_k=top_k, tta=tta, ood=ood)
    if as_json:
        typer.echo(json.dumps(metrics, indent=2))
        return
    _print_metrics(metrics, str(run))
    typer.echo(f"report: {run / 'evaluation' / 'report.html'}")


@app.command("report")
def report(run: Path = typer.Argument(..., help="Run directory.")) -> None:
    """Regenerate RUN/evaluation/report.html (evaluates first when there is no evaluation yet)."""
    from imagerec.classifier import evaluate as evaluate_run
    from imagerec.evaluation import write_report
    from imagerec.run import RunDir

    run_dir = RunDir(run).require()
    if not (run_dir.evaluation / "metrics.json").exists():
        evaluate_run(run)
    typer.echo(f"report: {write_report(run_dir)}")


@app.command("explain")
def explain(
    run: Path = typer.Argument(..., help="Run directory."),
    image: Path = typer.Argument(..., help="Image to explain."),
    out: Path = typer.Option(
        Path("gradcam.png"), "--out", "-o", help="PNG to write (input | Grad-CAM overlay)."
    ),
    class_name: str = typer.Option(None, "--class", help="Explain this class instead of the predicted one."),
) -> None:
    """Grad-CAM heatmap of what RUN's model looked at in IMAGE."""
    from imagerec.classifier import Classifier

    if not Path(image).is_file():
        raise ImagerecError(f"image {str(image)!r}: no such file")
    # Grad-CAM needs the gradients of the run's own Keras model, whatever runtime answers by default
    result = Classifier.load(run, runtime="keras").explain(image, out, class_name=class_name)
    typer.echo(
        f"{image}: {result['label']} ({result['confidence']:.3f}); Grad-CAM of {result['explained']!r} on layer {result['layer']} -> {result['out']}"
    )
    if result.get("note"):
        typer.echo(f"imagerec: warning: {result['note']}", err=True)


@app.command("compare")
def compare(
    runs: list[Path] = typer.Argument(..., help="Two or more run directories."),
    split: str = option(EvaluateSettings, "split", "--split", help="Which split of each run to compare on."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of the table."),
    gate: bool = typer.Option(
        False, "--gate", help="OLD NEW: exit 1 when NEW is worse than OLD beyond --tolerance."
    ),
    data: str = typer.Option(
        None, "--data", help="With --gate: a dataset to test both on (default: OLD's test split)."
    ),
    tolerance: float = option(
        EvaluateSettings, "gate_tolerance", "--tolerance", help="With --gate: how far below OLD NEW may fall."
    ),
) -> None:
    """Side-by-side accuracy (multi-label runs: micro F1, mAP), macro F1, ECE, parameters, size and latency of RUNS;
    with --gate, a pass/fail check of NEW against OLD on the same test images (exit 1 on fail)."""
    EvaluateSettings(gate_tolerance=tolerance).validate()
    if gate or data is not None:
        if not gate:
            raise ImagerecError("--data applies to --gate only; evaluate a run on a dataset with 'evaluate'")
        from imagerec.cli.gate import run_gate

        return run_gate(runs, data, tolerance)
    from rich.table import Table

    from imagerec.classifier import compare as compare_runs
    from imagerec.evaluation.compare import TASK_FIGURES

    rows = compare_runs(runs, split=split)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    tasks = {row["task"] for row in rows}
    mixed = len(tasks) > 1
    caption = (
        f"n/a: not a figure of that run's task ({', '.join(TASK_FIGURES['multiclass'])}: single-label; "
        f"{', '.join(TASK_FIGURES['multilabel'])}: multi-label; macro_f1: both)"
    )
    table = Table(
        title=f"runs compared on their {split} split (latency: keras runtime, batch of 8, median of 5)",
        caption=caption if mixed else None,
    )
    table.add_column("")
    for row in rows:
        table.add_column(row["run"], justify="right")
    figures = [(k, "{:.4f}") for task in TASK_FIGURES if task in tasks for k in TASK_FIGURES[task]]
    fields = (
        *([("task", "{}")] if mixed else []), ("model", "{}"), ("image_size", "{}"), ("num_images", "{}"),
        ("macro_f1", "{:.4f}"), *figures, ("params", "{:,}"), ("model_bytes", "{:,}"),
        ("latency_ms_per_image", "{:.2f}"),
    )  # fmt: skip
    for key, fmt in fields:
        table.add_row(key, *("n/a" if row[key] is None else fmt.format(row[key]) for row in rows))
    _console().print(table)


@app.command("calibrate")
def calibrate(
    run: Path = typer.Argument(..., help="Run directory."),
    target_accuracy: float = option(
        CalibrateSettings,
        "target_accuracy",
        "--target-accuracy",
        help="Selective accuracy the 'unknown' threshold aims for.",
    ),
    no_threshold: bool = typer.Option(
        False, "--no-threshold", help="Store the temperature only (no 'unknown' threshold of either kind)."
    ),
    split: str = option(CalibrateSettings, "split", "--split", help="Held-out split to fit on."),
    ood_keep: float = option(
        CalibrateSettings,
        "ood_keep",
        "--ood-keep",
        help="Share of the split's images the out-of-distribution threshold keeps (its true-positive rate).",
    ),
) -> None:
    """Fit temperature scaling on RUN's validation split; store temperature and an 'unknown' threshold (a
    multi-label run: re-tune its per-class thresholds on the split instead)."""
    from imagerec.classifier import Classifier

    CalibrateSettings(target_accuracy=target_accuracy, split=split, ood_keep=ood_keep).validate()
    clf = Classifier.load(run)
    no = no_threshold
    rec = clf.calibrate(split=split, target_accuracy=None if no else target_accuracy, ood_keep=None if no else ood_keep)
    if rec.get("task") == "multilabel":  # no temperature: the per-class thresholds were re-tuned
        _print_thresholds(rec, run / clf.run_dir.thresholds.name)
        _print_ood(rec, split)
        return
    typer.echo(
        f"temperature {rec['temperature']:.4f} fitted on {rec['num_images']} {split} images: "
        f"ECE {rec['ece_before']:.4f} -> {rec['ece_after']:.4f}, NLL {rec['nll_before']:.4f} -> {rec['nll_after']:.4f}"
    )
    from imagerec.training.selection import MIN_VAL_IMAGES

    if rec["num_images"] < MIN_VAL_IMAGES:  # the same bar as training's "too few to choose epochs" warning
        typer.echo(
            f"imagerec: warning: only {rec['num_images']} {split} images: the temperature and threshold are rough; "
            "more validation images make them reliable (train with --val 0.2, or add images to val/)",
            err=True,
        )
    if rec["threshold"] is None and not no_threshold:
        typer.echo(
            f"no confidence threshold reaches {target_accuracy:.0%} accuracy on {split}; no 'unknown' threshold stored"
        )
    elif rec["threshold"] is not None:
        typer.echo(
            f"answers 'unknown' below confidence {rec['threshold']:.4f}: keeps {rec['coverage']:.1%} of {split} images "
            f"at >= {target_accuracy:.0%} accuracy (predict --threshold 0 turns it off)"
        )
    _print_ood(rec, split)
    typer.echo(f"wrote {run / 'calibration.json'}")


def _print_ood(rec: dict[str, Any], split: str) -> None:
    if rec.get("ood_threshold") is not None:
        typer.echo(
            f"answers 'unknown' above out-of-distribution score {rec['ood_threshold']:.4f}: keeps "
            f"{rec['ood_keep']:.0%} of {split} images (imagerec evaluate --ood DIR measures it on foreign images)"
        )


def _print_thresholds(rec: dict, path: Path) -> None:
    """What ``imagerec calibrate`` did to a multi-label run: its per-class thresholds, before and after."""
    typer.echo(
        f"per-class thresholds re-tuned on {rec['num_images']} {rec['split']} images (each class's F1 maximum): "
        f"macro F1 {rec['macro_f1_before']:.4f} -> {rec['macro_f1_after']:.4f}, micro F1 "
        f"{rec['micro_f1_before']:.4f} -> {rec['micro_f1_after']:.4f} on {rec['split']}"
    )
    for name, value in rec["thresholds"].items():
        typer.echo(f"  {name}: {rec['previous'][name]:.4f} -> {value:.4f}")
    typer.echo(f"wrote {path}")


@data_app.command("issues")
def issues(
    run: Path = typer.Argument(..., help="Run directory."),
    splits: str = typer.Option(
        ",".join(default_of(IssuesSettings, "splits")),
        "--splits",
        help="Comma-separated parts of the run's split to check.",
    ),
    limit: int = option(IssuesSettings, "limit", "--limit", help="Show at most this many images (0 = all)."),
    max_p: float = option(
        IssuesSettings,
        "max_p_given",
        "--max-p",
        help="Flag images whose given label has probability below this.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of the table."),
) -> None:
    """Images of RUN whose given label the model most strongly disagrees with (possible label errors)."""
    from rich.table import Table

    from imagerec.classifier import Classifier
    from imagerec.evaluation.issues import find_label_issues, write_issues
    from imagerec.evaluation.report import label_issue_gallery, write_report

    names = tuple(s.strip() for s in splits.split(",") if s.strip())
    IssuesSettings(splits=names, limit=limit, max_p_given=max_p).validate()
    clf = Classifier.load(run)
    rows = find_label_issues(clf, names, limit or None, max_p)
    write_issues(clf.run_dir, rows)
    label_issue_gallery(clf, rows)
    if (clf.run_dir.evaluation / "metrics.json").exists():
        write_report(clf.run_dir)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    # a multi-label run: one row per image and class, a label missing from the given set or extra in it
    sets = clf.task == "multilabel"
    table = Table(title=f"{len(rows)} possible label issue(s) in {run} (ranked by p(given label))")
    named = ("issue", "label") if sets else ()
    for col in ("p(given)", *named, "given", "model says", "p(model)", "split"):
        table.add_column(col, justify="right" if col.startswith("p(") else "left", no_wrap=True)
    table.add_column("path", overflow="fold")
    for r in rows:
        split_note = r["split"] + ("" if r["out_of_sample"] else " (in-sample)")
        table.add_row(
            f"{r['p_given']:.2g}",
            *((r["kind"], r["label"]) if sets else ()),
            r["given"] or ("(none)" if sets else ""),
            r["predicted"] or ("(none)" if sets else ""),
            f"{r['p_predicted']:.3f}",
            split_note,
            r["path"],
        )
    _console().print(table)
    typer.echo(f"wrote {clf.run_dir.evaluation / 'label_issues.json'}")
