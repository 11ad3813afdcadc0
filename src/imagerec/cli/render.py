"""Rich rendering of reports for the terminal (the CLI prints; libraries return data)."""

from __future__ import annotations

import os
from typing import Any

from rich.console import Console
from rich.table import Table

MAX_ROWS = 50
MAX_GROUPS = 20


def _rel(path: str, root: str) -> str:
    """``path`` relative to the dataset root when it lies under it (shorter tables)."""
    try:
        rel = os.path.relpath(path, root)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel


def _fmt_size(size: list[int] | None) -> str:
    return f"{size[0]}x{size[1]}" if size else "-"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])) or "-"


def print_inspect(report: dict[str, Any], console: Console | None = None) -> None:
    """Print ``imagerec data inspect``: classes, summary, invalid files and duplicate groups."""
    console = console or Console()
    task = ", multi-label" if report.get("task") == "multilabel" else ""
    console.print(f"[bold]{report['root']}[/bold]  ({report['kind']}{task})", soft_wrap=True)
    console.print(_class_table(report))
    console.print(_summary_table(report))
    root = report["root"]
    if report["invalid"]:
        console.print(f"[bold]invalid files: {len(report['invalid'])}[/bold] (listed, skipped by training)")
        bad = Table()
        bad.add_column("path", overflow="fold")
        bad.add_column("reason", style="yellow")
        bad.add_column("detail", overflow="fold", style="dim")
        for item in report["invalid"][:MAX_ROWS]:
            code, _, detail = item["reason"].partition(": ")
            bad.add_row(_rel(item["path"], root), code, detail)
        if len(report["invalid"]) > MAX_ROWS:
            bad.add_row(f"... {len(report['invalid']) - MAX_ROWS} more (see --json)", "", "")
        console.print(bad)
    conflicts = report.get("label_conflicts") or []
    if conflicts:
        console.print(
            f"[bold red]label conflicts: {len(conflicts)} group(s)[/bold red] (the same file in several classes: "
            "one label is wrong; 'imagerec data clean --duplicates' keeps the majority's copy)"
        )
        table = Table(show_lines=True)
        table.add_column("classes", style="red")
        table.add_column("files", overflow="fold")
        for item in conflicts[:MAX_GROUPS]:
            table.add_row(", ".join(item["labels"]), "\n".join(_rel(p, root) for p in item["paths"]))
        if len(conflicts) > MAX_GROUPS:
            table.add_row("", f"... {len(conflicts) - MAX_GROUPS} more groups (see --json)")
        console.print(table)
    for key, title in (
        ("duplicates", "identical files (same bytes)"),
        ("near_duplicates", "near-duplicates (same picture, different bytes)"),
    ):
        groups = report[key]
        if not groups:
            continue
        console.print(f"[bold]{title}: {len(groups)} group(s)[/bold]")
        table = Table(show_lines=True)
        table.add_column("#", justify="right", style="dim")
        table.add_column("files", overflow="fold")
        for i, group in enumerate(groups[:MAX_GROUPS], start=1):
            table.add_row(str(i), "\n".join(_rel(p, root) for p in group))
        if len(groups) > MAX_GROUPS:
            table.add_row("", f"... {len(groups) - MAX_GROUPS} more groups (see --json)")
        console.print(table)
    if report["duplicates"] or report["near_duplicates"]:
        console.print(
            "[dim]the split keeps each group on one side, so no copy leaks from train into val/test[/dim]"
        )


def _class_table(report: dict[str, Any]) -> Table:
    total = max(1, report["num_images"])
    splits = report.get("class_splits") or {}
    split_names = [s for s in ("train", "val", "test") if any(s in v for v in splits.values())]
    table = Table()
    table.add_column("class")
    table.add_column("images", justify="right")
    table.add_column("share", justify="right")
    for name in split_names:
        table.add_column(name, justify="right", style="dim")
    for name, count in report["classes"].items():
        per_split = [str(splits.get(name, {}).get(s, 0)) for s in split_names]
        row = [name, str(count), f"{count / total:.1%}", *per_split]
        table.add_row(*row, style="bold red" if count == 0 else None)
    return table


def _summary_table(report: dict[str, Any]) -> Table:
    table = Table(show_header=False, box=None, padding=(0, 1))
    table.add_column(style="bold")
    table.add_column()
    ratio = report["imbalance_ratio"]
    size = report["image_size"]
    rows = [
        ("valid images", f"{report['num_images']} in {report['num_classes']} classes"),
        ("imbalance", f"{ratio:.2f}x (largest / smallest class)" if ratio else "-"),
        (
            "image sizes",
            f"min {_fmt_size(size['min'])}, median {_fmt_size(size['median'])}, max {_fmt_size(size['max'])}",
        ),
        ("formats", _counts(report["formats"])),
        ("modes", _counts(report["modes"])),
        ("invalid", str(len(report["invalid"]))),
        ("ignored", _ignored(report)),
        (
            "duplicates",
            f"{len(report['duplicates'])} identical, {len(report['near_duplicates'])} near groups",
        ),
    ]
    if sets := report.get("label_sets"):
        rows.insert(1, ("labels per image", f"{sets['labels_per_image']:.2f} (at most {sets['max_labels']}), "
                        f"{sets['no_label']} image(s) without a label, {sets['distinct_sets']} distinct sets"))  # fmt: skip
    if report.get("label_conflicts"):
        rows.append(("label conflicts", f"{len(report['label_conflicts'])} (same file in several classes)"))
    if report.get("empty_classes"):
        rows.append(("empty classes", ", ".join(report["empty_classes"])))
    for key, value in rows:
        table.add_row(key, value, style="red" if key in ("empty classes", "label conflicts") else None)
    return table


def _ignored(report: dict[str, Any], shown: int = 5) -> str:
    """The count and the first few names of the files that are not samples (README, .DS_Store, notes.txt...)."""
    files = report.get("ignored_files") or []
    if not files:
        return "0"
    names = ", ".join(_rel(f, report["root"]) for f in files[:shown])
    more = f", ... {len(files) - shown} more (see --json)" if len(files) > shown else ""
    return f"{len(files)} (hidden or not an image file): {names}{more}"
