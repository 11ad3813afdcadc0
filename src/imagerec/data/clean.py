"""Move bad files out of a dataset into a quarantine folder: nothing is deleted, every move is logged."""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections import Counter
from pathlib import Path

from imagerec.data.scan import scan_dataset
from imagerec.data.sources import OUTSIDE_ROOT
from imagerec.errors import DataError

logger = logging.getLogger(__name__)


def clean_dataset(
    data: str | os.PathLike,
    quarantine: str | os.PathLike,
    duplicates: bool = False,
    follow_symlinks: bool = False,
) -> list[dict]:
    """Move invalid files (and, with ``duplicates``, extra copies of identical files) to ``quarantine``.

    Relative paths are kept under ``quarantine``; ``quarantine/quarantine.jsonl`` logs each move with its reason
    (appended as each file moves, so an interrupted clean still has a complete log). Nothing is deleted, and a
    file already in the quarantine is never overwritten.

    Which copy stays (``duplicates``): of identical files in one class, the first by path. Identical files in
    several classes are a label conflict: the copy in the class that holds most of the copies stays; with no
    majority, every copy moves (a person has to choose the label). Each reason names the copy kept and why.

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
    result = scan_dataset(root, follow_symlinks=follow_symlinks)
    # a link out of the dataset is not a broken file, only one not used by default: it stays where it is
    links = [item for item in result.invalid if item["reason"] == OUTSIDE_ROOT]
    if links:
        logger.warning(
            "left %d symlink(s) that point outside %s in place; pass --follow-symlinks to use them",
            len(links),
            root,
        )
    moves = [(item["path"], item["reason"]) for item in result.invalid if item["reason"] != OUTSIDE_ROOT]
    if duplicates:
        label_of = {img.path: img.label for img in result.images}
        moves += [move for group in result.duplicates for move in duplicate_moves(group, label_of)]
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


def duplicate_moves(group: list[str], label_of: dict[str, str]) -> list[tuple[str, str]]:
    """(path, reason) for every copy of one group of identical files that should leave the dataset."""
    counts = Counter(label_of[p] for p in group)
    if len(counts) == 1:
        kept = group[0]
        return [(p, f"duplicate of {kept} (kept: the first copy by path)") for p in group[1:]]
    ranked = counts.most_common()
    classes = ", ".join(f"{label!r} x{n}" for label, n in sorted(counts.items()))
    if ranked[0][1] == ranked[1][1]:
        why = f"label conflict: the same picture is in {classes}; no majority, so no copy was kept (label it by hand)"
        return [(p, why) for p in group]
    label = ranked[0][0]
    kept = next(p for p in group if label_of[p] == label)
    why = f"label conflict: the same picture is in {classes}; kept {kept} ({label!r} holds most copies)"
    return [(p, why) for p in group if p != kept]


def _free_name(dest: Path) -> Path:
    """``dest``, or ``dest`` with a ``.1``, ``.2``... suffix when an earlier clean already put a file there."""
    candidate, n = dest, 0
    while candidate.exists():
        n += 1
        candidate = dest.with_name(f"{dest.stem}.{n}{dest.suffix}")
    return candidate
