"""Reviewers' labels, written into a dataset that ``imagerec train`` reads (the Review tab, ``serve --review-out``).

Single-label runs write class folders::

    DATASET/<class>/<id>.<ext>      the picture, labelled <class>
    DATASET/.none/<id>.<ext>        "none of these" (a dot folder: never a class to ``imagerec train``)
    DATASET/.review/log.jsonl       every decision (label, none, skip, undo) with its time: the audit trail

Multi-label runs write ``DATASET/images/<id>.<ext>`` and ``DATASET/labels.csv`` (``path,labels``, classes joined
by ``;``; "none of these" = an empty label set, which is what it means there), rewritten whole on each label.

Why a lock and renames: two reviewers may label the same picture at once. Every write happens under an exclusive
``flock`` on ``DATASET/.review/lock`` (threads and processes alike), the picture lands by temp file + ``os.replace``
and only then are its other copies removed, so the last write wins and a reader never sees a half-written file,
a picture in two classes, or none while it is moved.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from imagerec.errors import ImagerecError
from imagerec.utils import atomic_write_bytes, atomic_write_text

NONE_DIR = ".none"
#: what a reviewer can decide besides a class
ACTIONS = ("none", "skip", "undo")


class LabelRefused(ImagerecError):
    """A label outside the run's classes (the message lists them)."""


class LabelStore:
    """Write reviewers' decisions into ``dataset`` (see the module docstring).

    Args:
        dataset: the folder to write (created).
        classes: the run's class names; anything else is refused.
        multilabel: write ``labels.csv`` (path,labels) instead of class folders.
    """

    def __init__(self, dataset: str | os.PathLike, classes: list[str], multilabel: bool = False):
        self.root = Path(dataset)
        self.classes = list(classes)
        self.multilabel = multilabel
        (self.root / ".review").mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.root / ".review" / "lock", "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def check(self, label: Any) -> list[str] | None:
        """The class names of ``label`` (a class, or a list of them for multi-label), or None for an action.

        Raises:
            LabelRefused: a name outside the classes (or a list on a single-label run).
        """
        if isinstance(label, str) and label in ACTIONS:
            return None
        names = label if isinstance(label, list) and self.multilabel else [label]
        bad = [n for n in names if not isinstance(n, str) or n not in self.classes]
        if bad or not names:
            raise LabelRefused(
                f"label {label!r} is not one of the run's classes; expected one of {', '.join(self.classes)} "
                f"(or {', '.join(ACTIONS)})"
            )
        return list(names)

    def decide(self, item_id: str, image: Path, label: Any, reviewer: str | None = None) -> dict[str, Any]:
        """Apply one decision on picture ``item_id`` (its file ``image``): a class (list), 'none', 'skip' or 'undo'.
        The last decision on a picture wins. Returns the logged entry."""
        names = self.check(label)
        entry = {"time": time.time(), "id": item_id, "label": label, "reviewer": reviewer}
        with self._locked():
            if label != "skip":
                (self._write_csv if self.multilabel else self._write_folder)(item_id, image, names, label)
            with open(self.root / ".review" / "log.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry) + "\n")
        return entry

    def _write_folder(self, item_id: str, image: Path, names: list[str] | None, label: Any) -> None:
        name = f"{item_id}{image.suffix.lower()}"
        target = None if label == "undo" else self.root / (names[0] if names else NONE_DIR) / name
        if target is not None:
            atomic_write_bytes(target, image.read_bytes())
        for folder in [*self.classes, NONE_DIR]:
            for old in (self.root / folder).glob(f"{item_id}.*"):
                if old != target:
                    old.unlink(missing_ok=True)

    def _write_csv(self, item_id: str, image: Path, names: list[str] | None, label: Any) -> None:
        rel = f"images/{item_id}{image.suffix.lower()}"
        rows = {r["path"]: r["labels"] for r in self.csv_rows()}
        if label == "undo":
            rows.pop(rel, None)
        else:
            if not (self.root / rel).exists():
                atomic_write_bytes(self.root / rel, image.read_bytes())
            rows[rel] = ";".join(names or [])
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["path", "labels"])
        writer.writerows(sorted(rows.items()))
        atomic_write_text(self.root / "labels.csv", buf.getvalue())

    def csv_rows(self) -> list[dict[str, str]]:
        try:
            with open(self.root / "labels.csv", newline="", encoding="utf-8") as fh:
                return list(csv.DictReader(fh))
        except FileNotFoundError:
            return []

    def decisions(self) -> dict[str, Any]:
        """The last decision per picture id (from the log; 'undo' clears it, 'skip' counts as seen)."""
        out: dict[str, Any] = {}
        try:
            lines = (self.root / ".review" / "log.jsonl").read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return out
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a torn last line of a killed process
            if entry.get("label") == "undo":
                out.pop(entry.get("id"), None)
            else:
                out[entry.get("id")] = entry.get("label")
        return out


__all__ = ["ACTIONS", "NONE_DIR", "LabelRefused", "LabelStore"]
