"""Dataset sources, all read through :func:`load_source`.

* a folder of class folders ``DATA/<class>/**/<image>``;
* a folder with ``train/``, ``val/`` (or ``validation/``) and ``test/`` sub-folders, each of class folders;
* a CSV with ``path,label`` columns (paths relative to the CSV, never escaping its folder);
* ``builtin:NAME`` — a built-in real dataset, materialised once as a PNG folder tree (see ``builtin.py``).

Hidden files (``.DS_Store``, AppleDouble ``._x.jpg``) and files without an image extension are ignored and
listed by name. A file whose real location is outside the dataset root (a symlink, or a file in a symlinked
folder) is listed as invalid unless ``follow_symlinks=True`` (``--follow-symlinks``: a user's own dataset built
from links, the usual way to make a subset); servers and uploads never follow them.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

from imagerec.data.images import IMAGE_EXTENSIONS
from imagerec.errors import DataError

SPLIT_ALIASES = {"train": "train", "val": "val", "validation": "val", "valid": "val", "test": "test"}


@dataclass(frozen=True)
class Sample:
    """One labelled image file. ``split`` is set when the source fixes it (split folders or a CSV column)."""

    path: str
    label: str
    split: str | None = None


@dataclass
class DatasetSource:
    """What a dataset holds before any file is decoded."""

    root: Path
    kind: str  # folder | splits | csv
    samples: list[Sample]
    class_names: list[str]
    ignored_files: list[str] = field(default_factory=list)
    invalid: list[dict[str, str]] = field(default_factory=list)
    follow_symlinks: bool = False

    @property
    def ignored(self) -> int:
        return len(self.ignored_files)

    @property
    def has_splits(self) -> bool:
        return any(s.split for s in self.samples)


def load_source(data: str | os.PathLike, follow_symlinks: bool = False) -> DatasetSource:
    """Resolve ``data`` (folder, CSV or ``builtin:NAME``) into a :class:`DatasetSource`.

    Args:
        data: the dataset.
        follow_symlinks: use files whose real location is outside the dataset root (symlinks); off by default.

    Raises:
        DataError: the path does not exist, is empty, or the CSV is malformed.
    """
    text = str(data)
    if text.startswith("builtin:"):
        from imagerec.data.builtin import materialize

        return load_source(materialize(text.split(":", 1)[1]), follow_symlinks)
    path = Path(text).expanduser()
    if not path.exists():
        raise DataError(
            f"dataset {text!r} does not exist; expected a folder of class folders, a CSV, or builtin:NAME"
        )
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise DataError(
                f"dataset {text!r} is a file but not a .csv; expected a folder or a CSV with path,label"
            )
        return _from_csv(path, follow_symlinks)
    split_dirs = {d.name.lower(): d for d in _visible_dirs(path) if d.name.lower() in SPLIT_ALIASES}
    if "train" in split_dirs and len(split_dirs) >= 2 or set(split_dirs) == {"train"}:
        return _from_split_folders(path, split_dirs, follow_symlinks)
    return _from_class_folders(path, follow_symlinks)


def _visible_dirs(path: Path) -> list[Path]:
    return sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))


def _loose_files(folder: Path) -> list[str]:
    """Files lying next to the class folders (README, labels.txt...): not samples, listed as ignored."""
    return sorted(str(f) for f in folder.iterdir() if f.is_file())


OUTSIDE_ROOT = "symlink points outside the dataset root (to use it, pass --follow-symlinks)"


def _walk_class(root: Path, class_dir: Path, label: str, split: str | None, out: DatasetSource) -> None:
    real_root = root.resolve()
    seen: set[Path] = set()  # real folders already walked: a link loop is walked once
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=out.follow_symlinks):
        real = Path(dirpath).resolve()
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            full = Path(dirpath) / name
            if name.startswith(".") or full.suffix.lower() not in IMAGE_EXTENSIONS:
                out.ignored_files.append(str(full))
                continue
            if not out.follow_symlinks and not full.resolve().is_relative_to(real_root):
                out.invalid.append({"path": str(full), "reason": OUTSIDE_ROOT})
                continue
            out.samples.append(Sample(str(full), label, split))


def _from_class_folders(path: Path, follow_symlinks: bool) -> DatasetSource:
    out = DatasetSource(root=path, kind="folder", samples=[], class_names=[], follow_symlinks=follow_symlinks)
    classes = _visible_dirs(path)
    out.ignored_files += _loose_files(path)
    if not classes:
        raise DataError(f"dataset folder {str(path)!r} has no class folders; expected DATA/<class>/<image>")
    for class_dir in classes:
        _walk_class(path, class_dir, class_dir.name, None, out)
    out.class_names = [d.name for d in classes]
    return out


def _from_split_folders(path: Path, split_dirs: dict[str, Path], follow_symlinks: bool) -> DatasetSource:
    out = DatasetSource(root=path, kind="splits", samples=[], class_names=[], follow_symlinks=follow_symlinks)
    out.ignored_files += _loose_files(path)
    names: set[str] = set()
    for alias, split_dir in sorted(split_dirs.items()):
        out.ignored_files += _loose_files(split_dir)
        split = SPLIT_ALIASES[alias]
        for class_dir in _visible_dirs(split_dir):
            names.add(class_dir.name)
            _walk_class(path, class_dir, class_dir.name, split, out)
    if not names:
        raise DataError(f"dataset folder {str(path)!r} has split folders but no class folders inside them")
    out.class_names = sorted(names)
    return out


def _from_csv(path: Path, follow_symlinks: bool) -> DatasetSource:
    base = path.parent.resolve()
    out = DatasetSource(root=base, kind="csv", samples=[], class_names=[], follow_symlinks=follow_symlinks)
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip().lower() for c in (reader.fieldnames or [])]
            if "path" not in columns or "label" not in columns:
                raise DataError(
                    f"CSV {str(path)!r} has columns {columns}; expected at least 'path' and 'label'"
                )
            rows = [{k.strip().lower(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    except UnicodeDecodeError:
        raise DataError(f"CSV {str(path)!r} is not UTF-8 text") from None
    labels: set[str] = set()
    for line, row in enumerate(rows, start=2):
        rel, label = row.get("path", ""), row.get("label", "")
        if not rel or not label:
            raise DataError(f"CSV {str(path)!r} line {line}: empty path or label")
        # the path as written may never leave the folder; where it leads (a symlink) only with follow_symlinks
        full = Path(os.path.normpath(base / rel)) if follow_symlinks else (base / rel).resolve()
        if os.path.isabs(rel) or not full.is_relative_to(base):
            hint = (
                "" if follow_symlinks or ".." in Path(rel).parts else " (a symlink? pass --follow-symlinks)"
            )
            raise DataError(
                f"CSV {str(path)!r} line {line}: path {rel!r} escapes the CSV's folder {str(base)!r}{hint}"
            )
        split = SPLIT_ALIASES.get(row.get("split", "").lower()) if row.get("split") else None
        out.samples.append(Sample(str(base / rel), label, split))
        labels.add(label)
    if not out.samples:
        raise DataError(f"CSV {str(path)!r} lists no images")
    out.class_names = sorted(labels)
    return out
