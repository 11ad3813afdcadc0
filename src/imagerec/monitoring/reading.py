"""Reading a ``--record DIR`` back (``imagerec.monitoring.records`` writes it): rows, torn lines, embeddings.

Example:
    >>> from imagerec.monitoring.records import read_records
    >>> records = read_records("recorded/")          # doctest: +SKIP
    >>> len(records.rows), records.torn, records.embeddings().shape  # doctest: +SKIP
    (1200, 0, (1200, 128))
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imagerec.errors import ImagerecError


def decode_embedding(text: str | None) -> np.ndarray | None:
    """A record's ``embedding`` (base64 of little-endian float16) as float32; None when it has none."""
    if not text:
        return None
    return np.frombuffer(base64.b64decode(text), "<f2").astype(np.float32)


@dataclass
class Records:
    """Records read back from a ``--record DIR`` (oldest first) and the torn lines skipped."""

    root: Path
    rows: list[dict[str, Any]]
    torn: int = 0

    def embeddings(self) -> np.ndarray | None:
        """``(N, D)`` float32 embeddings of every row (None when any row has none)."""
        vectors = [decode_embedding(r.get("embedding")) for r in self.rows]
        if not vectors or any(v is None for v in vectors):
            return None
        return np.stack(vectors)  # type: ignore[arg-type]

    def image_path(self, row: dict[str, Any]) -> Path | None:
        """Where the row's kept picture is (None: none was kept); it may since have been pruned by the caps."""
        return self.root / row["image"] if row.get("image") else None


def iter_records(root: str | os.PathLike, since: float | None = None) -> Iterator[dict[str, Any] | None]:
    """Each record of ``root`` in file then line order; None for a torn (unparseable) line."""
    for path in sorted((Path(root) / "records").glob("records-*.jsonl")):
        try:
            handle = open(path, "rb")  # noqa: SIM115 - closed below; a file pruned meanwhile is skipped
        except FileNotFoundError:
            continue
        with handle:
            for line in handle:
                try:
                    row = json.loads(line)
                except ValueError:
                    yield None
                    continue
                if not isinstance(row, dict):
                    yield None
                elif since is None or row.get("time", 0) >= since:
                    yield row


def read_records(root: str | os.PathLike, since: float | None = None) -> Records:
    """Every record of ``root`` (a ``--record DIR``), sorted by time; torn lines are counted and skipped.

    Raises:
        ImagerecError: ``root`` holds no ``records/`` directory.
    """
    root = Path(root)
    if not (root / "records").is_dir():
        raise ImagerecError(f"{root}: no records/ here; expected a directory written by serve/video --record")
    rows, torn = [], 0
    for row in iter_records(root, since):
        if row is None:
            torn += 1
        else:
            rows.append(row)
    rows.sort(key=lambda r: r.get("time", 0))
    return Records(root, rows, torn)


__all__ = ["Records", "decode_embedding", "iter_records", "read_records"]
