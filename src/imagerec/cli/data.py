"""``imagerec data inspect | clean | builtin``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from imagerec.bounds import Bound, require
from imagerec.cli.app import data_app
from imagerec.cli.options import option
from imagerec.settings import DataConfig, TrainConfig

#: Bounds of the flags that are no setting (settings fields declare their own).
WORKERS = Bound(ge=0, integer=True, note="0 = CPU count")
LIMIT = Bound(ge=0, integer=True, note="0 = all")

FOLLOW_SYMLINKS = option(
    DataConfig,
    "follow_symlinks",
    "--follow-symlinks",
    help="Use image files that are symlinks to places outside DATA (a subset made of links).",
)


@data_app.command("inspect")
def inspect(
    data: str = typer.Argument(
        ..., help="Folder of class folders, split folder, CSV (path,label or path,labels) or builtin:NAME."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
    workers: int = typer.Option(0, help="Decode processes (0 = CPU count)."),
    follow_symlinks: bool = FOLLOW_SYMLINKS,
) -> None:
    """Decode every image and report classes, counts, invalid files, duplicates and label conflicts."""
    from imagerec.data.scan import scan_dataset

    require("--workers", workers, WORKERS)
    report = scan_dataset(data, workers=workers or None, follow_symlinks=follow_symlinks).to_dict()
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    from imagerec.cli.render import print_inspect

    print_inspect(report)


@data_app.command("clean")
def clean(
    data: str = typer.Argument(..., help="Dataset folder to clean."),
    quarantine: Path = typer.Option(
        ..., "--quarantine", help="Folder to move bad files into (nothing is deleted)."
    ),
    duplicates: bool = typer.Option(
        False, "--duplicates", help="Also move extra copies of identical files and resolve label conflicts."
    ),
    follow_symlinks: bool = FOLLOW_SYMLINKS,
) -> None:
    """Move invalid files (and optionally duplicate copies) out of DATA, keeping relative paths and a log."""
    from imagerec.data.clean import clean_dataset

    moved = clean_dataset(data, quarantine, duplicates=duplicates, follow_symlinks=follow_symlinks)
    conflicts = {}
    for entry in moved:
        if entry["reason"].startswith("label conflict"):
            conflicts.setdefault(entry["reason"], []).append(entry["from"])
    for reason, paths in list(conflicts.items())[:20]:
        typer.echo(f"{reason}; moved {', '.join(paths)}")
    if len(conflicts) > 20:
        typer.echo(f"... {len(conflicts) - 20} more label conflicts (see the log)")
    typer.echo(f"moved {len(moved)} file(s) to {quarantine} (log: {quarantine / 'quarantine.jsonl'})")


@data_app.command("builtin")
def builtin(
    name: str = typer.Argument(
        ..., help="fashion-mnist | mnist-5k | digits | fashion-mnist-pairs (multi-label)"
    ),
    dest: Path = typer.Argument(..., help="Folder to write the PNG tree into."),
    limit: int = typer.Option(0, help="At most this many images per split (0 = all)."),
) -> None:
    """Write a built-in dataset as a folder tree of PNG files (official train/test split kept)."""
    from imagerec.data.builtin import dataset_path, write_builtin

    require("--limit", limit, LIMIT)
    path = write_builtin(name, dest, limit=limit or None)
    data = dataset_path(name, path)
    typer.echo(f"wrote {name} to {path}" + (f" (train on {data})" if data != path else ""))


@data_app.command("split")
def split(
    data: str = typer.Argument(
        ..., help="Folder of class folders, split folder, CSV (path,label or path,labels) or builtin:NAME."
    ),
    out: Path = typer.Option(..., "--out", help="Manifest CSV to write (path,label,split,sha256)."),
    val: float = option(
        DataConfig, "val", help="Validation fraction per class (when the data has no val/ part)."
    ),
    test: float = option(
        DataConfig, "test", help="Test fraction per class (when the data has no test/ part)."
    ),
    seed: int = option(
        TrainConfig, "seed", help="Seed of the split: the same seed and data give the same manifest."
    ),
    follow_symlinks: bool = FOLLOW_SYMLINKS,
) -> None:
    """Write the stratified, seeded train/val/test manifest that training reads (duplicates stay on one side)."""
    from collections import Counter

    from imagerec.data.scan import scan_dataset
    from imagerec.data.split import make_split, write_manifest

    DataConfig(val=val, test=test).validate()
    TrainConfig(seed=seed).validate()
    rows = make_split(scan_dataset(data, follow_symlinks=follow_symlinks), val=val, test=test, seed=seed)
    digest = write_manifest(rows, out)
    counts = Counter(r.split for r in rows)
    parts = ", ".join(f"{counts.get(s, 0)} {s}" for s in ("train", "val", "test"))
    typer.echo(f"wrote {out}: {parts} (sha256 {digest[:12]})")
