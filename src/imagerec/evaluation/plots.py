"""The evaluation pictures, drawn with matplotlib's Agg backend (no display needed), written as PNG.

Each function takes plain data (lists, arrays, dicts) and a path, and returns the path it wrote.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np

DPI = 110


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    matplotlib.rcParams["text.parse_math"] = (
        False  # class names are user text: "$x$" must not become mathtext
    )
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    _plt().close(fig)
    return path


def confusion_matrix_png(cm: list[list[int]], labels: list[str], path: str | Path) -> Path:
    """Counts (left) and row-normalised recall per true class (right); rows = true class, columns = predicted."""
    plt = _plt()
    cm_arr = np.asarray(cm, dtype=np.int64)
    rows = cm_arr.sum(axis=1, keepdims=True)
    norm = np.divide(cm_arr, rows, out=np.zeros(cm_arr.shape, dtype=np.float64), where=rows > 0)
    k = len(labels)
    side = max(4.5, 0.55 * k + 2.5)
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 1, side))
    for ax, data, title, fmt in (
        (axes[0], cm_arr, "counts", "d"),
        (axes[1], norm, "row-normalised (recall)", ".2f"),
    ):
        im = ax.imshow(data, cmap="Blues", vmin=0, vmax=max(1, data.max()) if fmt == "d" else 1.0)
        ax.set_title(f"confusion matrix: {title}")
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_xticks(range(k), labels, rotation=45, ha="right")
        ax.set_yticks(range(k), labels)
        threshold = data.max() / 2 if data.max() else 0.5
        if k <= 30:
            for i in range(k):
                for j in range(k):
                    ax.text(j, i, format(data[i, j], fmt), ha="center", va="center", fontsize=8 if k > 10 else 10,
                            color="white" if data[i, j] > threshold else "black")  # fmt: skip
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return _save(fig, path)


def read_history(path: str | Path) -> dict[str, list[float]]:
    """history.csv (Keras CSVLogger) as column -> values; empty when the file is missing."""
    path = Path(path)
    if not path.exists():
        return {}
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    cols: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            try:
                cols.setdefault(key, []).append(float(value))
            except (TypeError, ValueError):
                cols.setdefault(key, []).append(math.nan)
    return cols


def best_epoch(history: dict[str, list[float]]) -> int | None:
    """1-based epoch the best-model checkpoint kept (the best ``val_accuracy``, ties to the lower ``val_loss``;
    without validation, the last), by the rule of :mod:`imagerec.training.selection`."""
    from imagerec.training.selection import best_epoch as kept_epoch

    return kept_epoch(history) if history.get("loss") or history.get("val_accuracy") else None


def training_curves_png(history: dict[str, list[float]], path: str | Path) -> Path | None:
    """Loss and accuracy (a multi-label run: ROC AUC) per epoch, train vs val, with the best epoch marked; None
    without a history."""
    if not history or "loss" not in history:
        return None
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    epochs = np.arange(1, len(history["loss"]) + 1)
    best = best_epoch(history)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("loss", "accuracy" if "accuracy" in history else "auc"), strict=True):
        for prefix, style in (("", "-o"), ("val_", "-s")):
            if prefix + metric in history:
                ax.plot(
                    epochs,
                    history[prefix + metric],
                    style,
                    ms=3,
                    label=("val " if prefix else "train ") + metric,
                )
        if best is not None:
            ax.axvline(best, color="tab:red", ls="--", lw=1, label=f"best epoch {best}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def f1_bars_png(per_class: dict[str, dict[str, float]], path: str | Path) -> Path:
    """Horizontal bars of per-class F1, worst at the top, with each class's support."""
    plt = _plt()
    items = sorted(per_class.items(), key=lambda kv: kv[1]["f1"])
    names = [f"{k} (n={v['support']})" for k, v in items]
    values = [v["f1"] for _, v in items]
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.35 * len(items) + 1)))
    colors = plt.get_cmap("RdYlGn")(np.asarray(values))
    ax.barh(range(len(items)), values, color=colors)
    ax.set_yticks(range(len(items)), names)
    for i, v in enumerate(values):
        inside = v > 0.85  # long bars carry their value inside, in white
        ax.text(v - 0.01 if inside else v + 0.01, i, f"{v:.3f}", va="center", ha="right" if inside else "left",
                fontsize=8, color="white" if inside else "black")  # fmt: skip
    ax.invert_yaxis()  # worst class on top
    ax.set_xlim(0, 1)
    ax.set_xlabel("F1")
    ax.set_title("per-class F1 (worst first)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def score_histograms_png(
    panels: list[tuple[str, np.ndarray, np.ndarray]], names: tuple[str, str], path: str | Path
) -> Path:
    """One panel per ``(title, scores_a, scores_b)``: the two score distributions as overlaid histograms."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 3.4), squeeze=False)
    for ax, (title, a, b) in zip(axes[0], panels, strict=True):
        both = np.r_[a, b]
        lo, hi = float(both.min()), float(both.max())
        if lo >= 0 and hi > 20 * max(float(np.median(both)), 1e-9):  # a long tail (distances): a log axis
            from matplotlib.ticker import FuncFormatter, NullFormatter

            bins = np.geomspace(max(lo, hi * 1e-6, 1e-9), hi * 1.0001, 50)
            ax.set_xscale("log")  # plain tick labels: mathtext is off (class names are user text)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        else:
            bins = np.linspace(lo, hi + 1e-9, 50)
        ax.hist(a, bins=bins, alpha=0.6, label=names[0])
        ax.hist(b, bins=bins, alpha=0.6, label=names[1])
        ax.set_ylabel("images")
        ax.set_title(title)
        ax.set_xlabel("score (higher = further from the training data)")
        ax.legend(fontsize=8)
    return _save(fig, path)


def reliability_png(bins: list[dict[str, float]], ece: float, path: str | Path, title: str = "") -> Path:
    """Reliability diagram: accuracy per confidence bin against the diagonal, with the image count per bin."""
    plt = _plt()
    fig, (ax, hist) = plt.subplots(
        2, 1, figsize=(5.5, 6.5), gridspec_kw={"height_ratios": [3, 1]}, sharex=True
    )
    width = bins[0]["upper"] - bins[0]["lower"] if bins else 0.1
    filled = [b for b in bins if b["count"]]  # empty bins draw nothing (no fake gap)
    centers = [(b["lower"] + b["upper"]) / 2 for b in filled]
    acc = [b["accuracy"] for b in filled]
    conf = [b["confidence"] for b in filled]
    ax.bar(centers, acc, width=width * 0.95, color="tab:blue", edgecolor="black", label="accuracy")
    ax.bar(
        centers,
        np.abs(np.subtract(conf, acc)),
        bottom=np.minimum(conf, acc),
        width=width * 0.95,
        color="tab:red",
        alpha=0.3,
        edgecolor="tab:red",
        label="gap to mean confidence",
    )
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    fig.suptitle(f"reliability diagram{' ' + title if title else ''}: ECE = {ece:.4f}")
    # above the bars, not over them: the high-confidence bins (right) and the low ones (left) both hold data
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, fontsize="small", frameon=False)
    hist.bar(centers, [b["count"] for b in filled], width=width * 0.95, color="gray")
    hist.set_yscale("symlog")
    # plain numbers: log-axis labels are mathtext, which text.parse_math=False (see _plt) would print raw
    hist.yaxis.set_major_formatter(_plt().FuncFormatter(lambda value, _pos: f"{value:,.0f}"))
    hist.yaxis.set_minor_formatter(_plt().NullFormatter())
    hist.set_xlabel("confidence (top-1 probability)")
    hist.set_ylabel("images")
    hist.set_xlim(0, 1)
    fig.tight_layout()
    return _save(fig, path)


def image_grid_png(
    images: list[np.ndarray],
    captions: list[str],
    path: str | Path,
    title: str = "",
    heatmaps: list[np.ndarray | None] | None = None,
) -> Path | None:
    """A grid of images (uint8, H x W x C) with a caption each; ``heatmaps`` (H x W in 0..1) are overlaid."""
    if not images:
        return None
    plt = _plt()
    n = len(images)
    cols = min(n, 6)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.6 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (img, caption) in enumerate(zip(images, captions, strict=True)):
        ax = axes.flat[i]
        show = img[..., 0] if img.shape[-1] == 1 else img
        ax.imshow(show, cmap="gray" if show.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
        if heatmaps is not None and heatmaps[i] is not None:
            ax.imshow(heatmaps[i], cmap="jet", alpha=0.45, vmin=0, vmax=1, interpolation="bilinear",
                      extent=(-0.5, img.shape[1] - 0.5, img.shape[0] - 0.5, -0.5))  # fmt: skip
        ax.set_title(caption, fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def wrong_captions(items: list[dict[str, Any]]) -> list[str]:
    return [f"true: {it['true']}\npred: {it['pred']} ({it['confidence']:.2f})" for it in items]


def pr_curves_png(curves: dict[str, dict[str, Any]], path: str | Path) -> Path:
    """One precision-recall curve per class (a multi-label run), its AP in the title and the operating point of
    the class's threshold marked. ``curves``: name -> ``precision``, ``recall`` (arrays), ``ap``, ``point``
    (``(recall, precision)`` at the threshold)."""
    plt = _plt()
    cols = min(5, len(curves))
    rows = math.ceil(len(curves) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.5 * rows + 0.3), squeeze=False, sharex=True,
                             sharey=True)  # fmt: skip
    for ax in axes.flat[len(curves) :]:
        ax.axis("off")
    for ax, (name, c) in zip(axes.flat, curves.items(), strict=False):
        ax.plot(c["recall"], c["precision"], lw=1.2)
        if c.get("point") is not None:
            ax.plot(*c["point"], "o", color="tab:red", ms=4)
        ap = "n/a" if c.get("ap") is None else f"{c['ap']:.3f}"
        ax.set_title(f"{name}\nAP {ap}", fontsize=8)
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("recall", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("precision", fontsize=8)
    fig.suptitle("precision-recall per class (red: at the class's threshold)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def co_occurrence_png(
    matrix: list[list[int]], support: list[int], labels: list[str], path: str | Path
) -> Path:
    """A multi-label run's label confusion: of the images that have class *i* (row), the share for which class *j*
    (column) was predicted. The diagonal is each class's recall; off the diagonal, the classes predicted with it
    (also where both are true: compare the true co-occurrence in the data)."""
    plt = _plt()
    counts = np.asarray(matrix, dtype=np.float64)
    rows = np.asarray(support, dtype=np.float64)[:, None]
    share = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    k = len(labels)
    side = max(4.5, 0.55 * k + 2.5)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_title("predicted classes per true class (share of its images)")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_xticks(range(k), labels, rotation=45, ha="right")
    ax.set_yticks(range(k), labels)
    if k <= 30:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{share[i, j]:.2f}", ha="center", va="center", fontsize=8 if k > 10 else 10,
                        color="white" if share[i, j] > 0.5 else "black")  # fmt: skip
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return _save(fig, path)
