"""The pictures of an evaluation and ``evaluation/report.html``: one self-contained file (images as data URIs).

```
RUN/evaluation/
  metrics.json         the numbers (see imagerec.evaluation.metrics)
  predictions.csv      path, true, predicted, confidence, p_true per evaluated image
  confusion_matrix.png training_curves.png  per_class_f1.png  reliability.png
  most_wrong.png       the most confidently wrong images   gradcam_wrong.png  Grad-CAM over them
  label_issues.json    (from `imagerec data issues`)       label_issues.png   their gallery
  report.html          everything above in one file
```
"""

from __future__ import annotations

import base64
import csv
import html
import io
from pathlib import Path
from typing import Any

import numpy as np

from imagerec.evaluation import plots
from imagerec.evaluation.multilabel import report_cards, report_rows

MAX_WRONG = 12
MAX_GALLERY = 18

PICTURES = (
    ("confusion_matrix.png", "Confusion matrix", "Rows are the true class, columns the predicted one."),
    (
        "per_class_f1.png",
        "Per-class F1",
        "Worst classes first; n is the number of evaluated images of the class.",
    ),
    (
        "training_curves.png",
        "Training curves",
        "From history.csv; the dashed line marks the epoch of the saved model.",
    ),
    ("reliability.png", "Reliability diagram", "Bars below the diagonal: over-confident answers."),
    (
        "pr_curves.png",
        "Precision-recall per class",
        "Multi-label: each class's curve and AP; the red dot is the class's tuned threshold.",
    ),
    (
        "co_occurrence.png",
        "Label confusion",
        "Multi-label: of the images of the row's class, the share where the column's class was predicted.",
    ),
    (
        "ood_scores.png",
        "Out-of-distribution scores",
        "Test images against images of none of the classes (imagerec evaluate --ood): the less overlap, the better.",
    ),
    (
        "most_wrong.png",
        "Most confidently wrong images",
        "The model's most confident mistakes, with true and predicted labels.",
    ),
    (
        "gradcam_wrong.png",
        "Grad-CAM over those images",
        "Red: regions that drove the predicted (wrong) class.",
    ),
    (
        "label_issues.png",
        "Possible label issues",
        "Images whose given label the model most strongly disagrees with.",
    ),
)


def most_wrong(y: np.ndarray, probs: np.ndarray, limit: int = MAX_WRONG) -> list[int]:
    """Indices of wrong answers, most confident first."""
    pred = probs.argmax(axis=1)
    wrong = np.nonzero(pred != y)[0]
    return [int(i) for i in wrong[np.argsort(-probs[wrong].max(axis=1), kind="stable")][:limit]]


def write_predictions(
    path: Path, paths: list[str], y: np.ndarray, probs: np.ndarray, labels: list[str]
) -> None:
    from imagerec.utils import atomic_write_text

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(("path", "true", "predicted", "confidence", "p_true"))
    pred = probs.argmax(axis=1)
    for i, p in enumerate(paths):
        writer.writerow((p, labels[y[i]], labels[pred[i]], f"{probs[i].max():.6f}", f"{probs[i, y[i]]:.6f}"))
    atomic_write_text(path, buf.getvalue())


def write_pictures(clf, data, probs: np.ndarray, metrics: dict[str, Any]) -> list[Path]:
    """Every PNG of the evaluation into ``RUN/evaluation/``; returns the files written."""
    out = clf.run_dir.evaluation
    labels = clf.labels
    written = [
        plots.confusion_matrix_png(metrics["confusion_matrix"], labels, out / "confusion_matrix.png"),
        plots.f1_bars_png(metrics["per_class"], out / "per_class_f1.png"),
        plots.reliability_png(metrics["reliability"], metrics["ece"], out / "reliability.png"),
    ]
    curves = plots.training_curves_png(plots.read_history(clf.run_dir.history), out / "training_curves.png")
    wrong = most_wrong(data.y, probs)
    items = [
        {"true": labels[data.y[i]], "pred": labels[probs[i].argmax()], "confidence": float(probs[i].max())}
        for i in wrong
    ]
    for name in ("most_wrong.png", "gradcam_wrong.png"):
        (out / name).unlink(missing_ok=True)  # a stale picture from an earlier evaluation must not survive
    grid = plots.image_grid_png(
        [data.images[i] for i in wrong], plots.wrong_captions(items), out / "most_wrong.png"
    )
    written += [p for p in (curves, grid) if p is not None]
    keras_model = (
        clf.keras_model() if wrong else None
    )  # Grad-CAM needs the Keras model even when an export answers
    if keras_model is not None:
        from imagerec.evaluation.gradcam import GradCAM

        batch = data.images[wrong]
        heat = GradCAM(keras_model)(batch, probs[wrong].argmax(axis=1))
        written.append(
            plots.image_grid_png(
                list(batch), plots.wrong_captions(items), out / "gradcam_wrong.png", heatmaps=list(heat)
            )
        )
    return written


def label_issue_gallery(clf, rows: list[dict[str, Any]]) -> Path | None:
    """``label_issues.png``: the first rows of ``rows`` as pictures with their given and predicted labels."""
    from imagerec.errors import ImageRejected

    path = clf.run_dir.evaluation / "label_issues.png"
    path.unlink(missing_ok=True)
    images, captions = [], []
    for row in rows[:MAX_GALLERY]:
        try:
            images.append(clf.preprocess(row["path"]))
        except (ImageRejected, OSError):
            continue
        if "kind" in row:  # a multi-label run's row: one class missing from (or extra in) the given set
            given = row["given"] or "(none)"
            captions.append(f"{row['kind']}: {row['label']} (p={row['p_label']:.2f})\ngiven: {given}")
            continue
        captions.append(
            f"given: {row['given']} (p={row['p_given']:.2g})\nmodel: {row['predicted']} ({row['p_predicted']:.2f})"
        )
    return plots.image_grid_png(images, captions, path)


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _table(header: list[str], rows: list[list[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if value is None:
        return "n/a"
    return str(value)


def _flatten(obj: Any, prefix: str = "") -> list[list[Any]]:
    if isinstance(obj, dict):
        return [row for k, v in obj.items() for row in _flatten(v, f"{prefix}{k}.")]
    return [[prefix[:-1], obj if not isinstance(obj, list) else ", ".join(map(str, obj))]]


STYLE = """body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1150px;color:#222}
h1{font-size:1.5em}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
.cards{display:flex;flex-wrap:wrap;gap:10px}.card{background:#f4f6f9;border-radius:6px;padding:8px 14px}
.card b{display:block;font-size:1.4em}table{border-collapse:collapse;margin:8px 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;font-size:.9em}td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #eee}.muted{color:#666;font-size:.9em}"""


def render_html(
    metrics: dict[str, Any], config: dict[str, Any], run_dir, issues: list[dict[str, Any]] | None
) -> str:
    """The report as one HTML string with every picture of ``run_dir/evaluation`` embedded."""
    esc = html.escape
    multilabel = metrics.get("task") == "multilabel"
    per_class = _table(*report_rows(metrics)) if multilabel else None
    cards = report_cards(metrics) if multilabel else [
        ("accuracy", metrics["accuracy"]),
        (f"top-{metrics.get('top_k', 5)} accuracy", metrics["top_k_accuracy"]),
        ("macro F1", metrics["macro"]["f1"]),
        ("weighted F1", metrics["weighted"]["f1"]),
        ("ECE", metrics["ece"]),
        ("ROC AUC (OvR)", metrics.get("roc_auc_ovr")),
        ("images", metrics["num_images"]),
    ]  # fmt: skip
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>imagerec report: {esc(str(run_dir.path))}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Evaluation of {esc(str(run_dir.path))}</h1>",
        f"<p class='muted'>model {esc(str(config.get('model', {}).get('name', '?')))}, evaluated on "
        f"{esc(str(metrics.get('source')))}, {len(metrics['labels'])} classes, temperature {metrics.get('temperature', 1.0):.3f}"
        f"{'' if metrics.get('threshold') is None else ', unknown below confidence ' + format(metrics['threshold'], '.3f')}</p>",
        "<div class='cards'>"
        + "".join(f"<div class='card'>{esc(k)}<b>{esc(_fmt(v))}</b></div>" for k, v in cards)
        + "</div>",
        "<h2>Per class</h2>",
        per_class
        or _table(
            ["class", "precision", "recall", "F1", "support"],
            [[n, c["precision"], c["recall"], c["f1"], c["support"]] for n, c in metrics["per_class"].items()]
            + [
                [
                    f"{avg} avg",
                    metrics[avg]["precision"],
                    metrics[avg]["recall"],
                    metrics[avg]["f1"],
                    metrics["num_images"],
                ]
                for avg in ("macro", "weighted")
            ],
        ),
    ]
    calibration = run_dir.calibration
    if calibration.exists():
        from imagerec.utils import read_json

        parts += ["<h2>Calibration</h2>", _table(["setting", "value"], _flatten(read_json(calibration)))]
    for name, title, caption in PICTURES:
        path = run_dir.evaluation / name
        if path.exists():
            parts.append(
                f"<h2>{esc(title)}</h2><p class='muted'>{esc(caption)}</p><img alt='{esc(title)}' src='{_data_uri(path)}'>"
            )
    if issues:
        # a multi-label run's rows also name the class and whether it is missing or extra
        named = ["kind", "label"] if "kind" in issues[0] else []
        columns = ["path", "split", *named, "given", "predicted", "p_given", "out_of_sample"]
        header = [c.replace("p_given", "p(given)").replace("_", " ") for c in columns]
        parts.append(_table(header, [[r[c] for c in columns] for r in issues[:50]]))
    parts += ["<h2>Run configuration</h2>", _table(["setting", "value"], _flatten({k: v for k, v in config.items() if k != "class_names"})),
              "</body></html>"]  # fmt: skip
    return "\n".join(parts)


def write_report(run) -> Path:
    """(Re)write ``evaluation/report.html`` from the saved ``metrics.json`` and pictures of ``run``.

    Example:
        >>> imagerec.evaluation.write_report("runs/fmnist")
    """
    from imagerec.errors import RunError
    from imagerec.run import RunDir
    from imagerec.utils import atomic_write_text, read_json

    run_dir = run if isinstance(run, RunDir) else RunDir(run).require()
    metrics_path = run_dir.evaluation / "metrics.json"
    if not metrics_path.exists():
        raise RunError(
            f"run {str(run_dir.path)!r} has no evaluation yet; run 'imagerec evaluate {run_dir.path}' first"
        )
    metrics = read_json(metrics_path)
    issues_path = run_dir.evaluation / "label_issues.json"
    issues = read_json(issues_path) if issues_path.exists() else None
    path = run_dir.evaluation / "report.html"
    atomic_write_text(path, render_html(metrics, run_dir.read_config(), run_dir, issues))
    return path
