"""Rich rendering of reports for the terminal (the CLI prints; libraries return data)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def print_inspect(report: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"{report['root']} ({report['kind']})")
    table.add_column("class")
    table.add_column("images", justify="right")
    for name, count in report["classes"].items():
        table.add_row(name, str(count), style="red" if count == 0 else None)
    console.print(table)
    size = report["image_size"]
    ratio = report["imbalance_ratio"]
    console.print(
        f"valid images: {report['num_images']}  classes: {report['num_classes']}  "
        f"imbalance: {ratio:.2f}x" if ratio else f"valid images: {report['num_images']}"
    )
    if size["min"]:
        console.print(f"sizes: min {size['min']}, median {size['median']}, max {size['max']}  formats: {report['formats']}")
    console.print(f"ignored (hidden / not images): {report['ignored']}")
    if report["invalid"]:
        bad = Table(title=f"invalid files ({len(report['invalid'])})")
        bad.add_column("path")
        bad.add_column("reason")
        for item in report["invalid"][:50]:
            bad.add_row(item["path"], item["reason"])
        console.print(bad)
    for key, title in (("duplicates", "identical files"), ("near_duplicates", "near-duplicates (same pixels)")):
        if report[key]:
            console.print(f"[bold]{title}:[/bold] {len(report[key])} group(s)")
            for group in report[key][:10]:
                console.print("  " + "  =  ".join(group))
