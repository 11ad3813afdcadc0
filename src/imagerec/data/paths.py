"""Expand the paths a user names (files, folders searched recursively, globs) into image files."""

from __future__ import annotations

import glob
from pathlib import Path


def expand_paths(items: list[str]) -> tuple[list[Path], list[str]]:
    """Files named by ``items`` (files, folders searched recursively for image files, globs), and the missing."""
    from imagerec.data.images import IMAGE_EXTENSIONS

    files: list[Path] = []
    missing: list[str] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )  # fmt: skip
            files.extend(found)
        elif path.exists():
            files.append(path)
        elif glob.has_magic(item):
            matched = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
            if matched:
                files.extend(matched)
            else:
                missing.append(item)
        else:
            missing.append(item)
    seen: set[Path] = set()
    unique = [p for p in files if not (p in seen or seen.add(p))]
    return unique, missing
