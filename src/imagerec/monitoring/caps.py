"""The caps of a ``--record DIR`` (``RecordSettings.max_images``, ``max_mb``, ``max_age_days``): the oldest files go
first, and no file a live writer is appending to is ever removed (``--workers N``: one writer process each)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from imagerec.settings import RecordSettings


def prune(root: Path, settings: RecordSettings, keep: Path | None = None) -> None:
    """Apply ``settings``' caps to ``root``: pictures past ``max_images``, anything older than ``max_age_days``,
    then the oldest files until ``max_mb`` holds. ``keep`` (the file being written) and the newest record file of
    every other live writer process (``--workers N``) are never removed."""
    cutoff = time.time() - settings.max_age_days * 86400
    images = pictures(root)
    records = sorted((root / "records").glob("records-*.jsonl"))
    busy = _files_in_use(records, keep)
    for path in images[: max(0, len(images) - settings.max_images)]:
        path.unlink(missing_ok=True)
    files = [p for p in sorted([*images, *records], key=_mtime) if p not in busy and p.exists()]
    total = sum(_bytes(p) for p in files) + sum(_bytes(p) for p in busy)
    for path in files:
        if _mtime(path) >= cutoff and total <= settings.max_mb * 2**20:
            break
        total -= _bytes(path)
        path.unlink(missing_ok=True)


def _files_in_use(records: list[Path], keep: Path | None) -> set[Path]:
    """``keep`` and, per other live process, its newest record file (the names carry the writer's pid)."""
    newest: dict[int, Path] = {}
    for path in records:  # sorted: the last one of each pid is its newest
        try:
            newest[int(path.stem.split("-")[2])] = path
        except (IndexError, ValueError):
            continue
    busy = {keep} if keep is not None else set()
    for pid, path in newest.items():
        if pid != os.getpid() and _alive(pid):
            busy.add(path)
    return busy


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, not ours to signal
    return True


def pictures(root: Path) -> list[Path]:
    """The kept pictures, oldest first (their names start with the UTC date and time)."""
    return sorted(p for p in (root / "images").rglob("*") if p.is_file() and not p.name.endswith(".tmp"))


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _bytes(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


__all__ = ["pictures", "prune"]
