"""Move bad files out of a dataset into a quarantine folder: nothing is deleted, every move is logged."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from imagerec.data.scan import scan_dataset
from imagerec.errors import DataError


def clean_dataset(
    data: str | os.PathLike, quarantine: str | os.PathLike, duplicates: bool = False
) -> list[dict]:
    """Move invalid files (and, with ``duplicates``, all but the first copy of identical files) to ``quarantine``.

    Relative paths are kept under ``quarantine``; ``quarantine/quarantine.jsonl`` logs each move with its reason
    (appended as each file moves, so an interrupted clean still has a complete log). Nothing is deleted, and a
    file already in the quarantine is never overwritten.

    Returns:
        One ``{from, to, reason}`` entry per moved file.

    Raises:
        DataError: ``data`` is not a folder, or ``quarantine`` lies inside it.

    Example:
        >>> clean_dataset("photos/", "photos-quarantine/", duplicates=True)
    """
    root = Path(data)
    if not root.is_dir():
        raise DataError(
            f"{str(data)!r} is not a dataset folder; clean works on folders (not CSVs or built-ins)"
        )
    quarantine = Path(quarantine)
    if quarantine.resolve().is_relative_to(root.resolve()):
        raise DataError("the quarantine folder must be outside the dataset folder")
    result = scan_dataset(root)
    moves = [(item["path"], item["reason"]) for item in result.invalid]
    if duplicates:
        moves += [(p, f"duplicate of {group[0]}") for group in result.duplicates for p in group[1:]]
    done = []
    log = quarantine / "quarantine.jsonl"
    quarantine.mkdir(parents=True, exist_ok=True)
    for path, reason in moves:
        src = Path(path)
        rel = src.relative_to(root) if src.is_relative_to(root) else Path(src.name)
        dest = _free_name(quarantine / rel)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(src), str(dest))
        entry = {"from": str(src), "to": str(dest), "reason": reason}
        with log.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")
        done.append(entry)
    return done


def _free_name(dest: Path) -> Path:
    """``dest``, or ``dest`` with a ``.1``, ``.2``... suffix when an earlier clean already put a file there."""
    candidate, n = dest, 0
    while candidate.exists():
        n += 1
        candidate = dest.with_name(f"{dest.stem}.{n}{dest.suffix}")
    return candidate
