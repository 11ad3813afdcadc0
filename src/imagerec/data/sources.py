"""Dataset sources, all read through :func:`load_source`.

* a folder of class folders ``DATA/<class>/**/<image>``;
* a folder with ``train/``, ``val/`` (or ``validation/``) and ``test/`` sub-folders, each of class folders;
* a CSV with ``path,label`` columns (paths relative to the CSV, never escaping its folder);
* a CSV with ``path,labels`` columns: several classes per image, separated by ``;`` (empty: none) — multi-label;
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
    samples: list[Sample]  # a multi-label sample's ``label`` is its label set, joined (see join_labels)
    class_names: list[str]
    ignored_files: list[str] = field(default_factory=list)
    invalid: list[dict[str, str]] = field(default_factory=list)
    follow_symlinks: bool = False
    task: str = "multiclass"  # multiclass | multilabel (a CSV with a ``labels`` column)

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


def _link_problem(path: str, real_root: Path) -> str | None:
    """Why the symlink ``path`` is not a sample (it ends outside ``real_root``, or in a loop); None when it is."""
    try:
        return None if Path(path).resolve().is_relative_to(real_root) else OUTSIDE_ROOT
    except (RuntimeError, OSError):  # a link loop: RuntimeError up to Python 3.12, OSError (ELOOP) after
        return "symlink loop: the link never reaches a file"


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
        # a file's real location is its folder's unless the file itself is a link: one lstat per file, not a
        # resolve() of every path component (70k Fashion-MNIST files: 2.2 s -> 0.3 s)
        folder_inside = real.is_relative_to(real_root)
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                out.ignored_files.append(full)
                continue
            if not out.follow_symlinks:
                problem = (
                    _link_problem(full, real_root)
                    if os.path.islink(full)
                    else (None if folder_inside else OUTSIDE_ROOT)
                )
                if problem:
                    out.invalid.append({"path": full, "reason": problem})
                    continue
            out.samples.append(Sample(full, label, split))


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
            if "path" not in columns or ("label" not in columns and "labels" not in columns):
                raise DataError(
                    f"CSV {str(path)!r} has columns {columns}; expected at least 'path' and 'label' "
                    "(one class per image) or 'path' and 'labels' (several, separated by ';')"
                )
            if "label" in columns and "labels" in columns:
                raise DataError(
                    f"CSV {str(path)!r} has both 'label' and 'labels' columns; keep 'label' for one class per "
                    "image or 'labels' for several classes per image (separated by ';')"
                )
            rows = [{k.strip().lower(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    except UnicodeDecodeError:
        raise DataError(f"CSV {str(path)!r} is not UTF-8 text") from None
    if "labels" in columns:
        return _multilabel_csv(path, rows, out)
    labels: set[str] = set()
    for line, row in enumerate(rows, start=2):
        rel, label = row.get("path", ""), row.get("label", "")
        if not rel or not label:
            raise DataError(f"CSV {str(path)!r} line {line}: empty path or label")
        full, problem = _csv_path(base, rel, follow_symlinks)
        if problem:
            raise DataError(f"CSV {str(path)!r} line {line}: {problem}")
        out.samples.append(Sample(full, label, _csv_split(row)))
        labels.add(label)
    if not out.samples:
        raise DataError(f"CSV {str(path)!r} lists no images")
    out.class_names = sorted(labels)
    return out


def _csv_split(row: dict[str, str]) -> str | None:
    return SPLIT_ALIASES.get(row.get("split", "").lower()) if row.get("split") else None


def _csv_path(base: Path, rel: str, follow_symlinks: bool) -> tuple[str, str | None]:
    """The full path of a CSV row's ``path``, or what is wrong with it."""
    # the path as written may never leave the folder; where it leads (a symlink) only with follow_symlinks
    full = Path(os.path.normpath(base / rel)) if follow_symlinks else (base / rel).resolve()
    if os.path.isabs(rel) or not full.is_relative_to(base):
        hint = "" if follow_symlinks or ".." in Path(rel).parts else " (a symlink? pass --follow-symlinks)"
        return "", f"path {rel!r} escapes the CSV's folder {str(base)!r}{hint}"
    return str(base / rel), None


# --- multi-label CSV: path,labels with class names separated by ';' ------------------------------------------
#: separates the class names of a ``labels`` field; also joins a label set into a ``Sample.label`` key
LABEL_SEPARATOR = ";"
#: rows listed in one error message about a multi-label CSV (the count of the rest follows)
MAX_ROW_ERRORS = 10


def label_set(label: str) -> list[str]:
    """The class names of a multi-label key (``"Bag;Shirt"`` -> ``["Bag", "Shirt"]``; ``""`` -> ``[]``)."""
    return label.split(LABEL_SEPARATOR) if label else []


def join_labels(names) -> str:
    """The key of a label set: its sorted class names joined by ``;`` (``""`` for no label)."""
    return LABEL_SEPARATOR.join(sorted(names))


def parse_labels(field: str) -> tuple[list[str], str | None]:
    """The sorted class names of one ``labels`` field (empty: no label), or ``([], what is wrong)``.

    Refused, never dropped: a blank name (``a;;b``, a trailing ``;``), a name twice, a name with a comma (a
    quoted ``"a,b"`` meant as two classes: the separator is ``;``).
    """
    if not field.strip():
        return [], None
    names = [name.strip() for name in field.split(LABEL_SEPARATOR)]
    if not all(names):
        return (
            [],
            f"blank class name in labels {field!r} (';;' or a ';' at an end); separate names with one ';'",
        )
    for name in names:
        if names.count(name) > 1:
            return [], f"class {name!r} is listed twice in labels {field!r}"
        if "," in name:
            return [], f"class name {name!r} contains ','; separate the classes of an image with ';'"
    return sorted(names), None


def _multilabel_csv(path: Path, rows: list[dict[str, str]], out: DatasetSource) -> DatasetSource:
    """Samples of a ``path,labels`` CSV: ``Sample.label`` is the row's :func:`join_labels` key.

    Every bad row is reported in one :class:`DataError` (line numbers, what is wrong), nothing is skipped.
    """
    out.task = "multilabel"
    errors: list[str] = []
    spelling: dict[str, dict[str, int]] = {}  # casefolded name -> spelling -> first line
    for line, row in enumerate(rows, start=2):
        rel = row.get("path", "")
        names, problem = parse_labels(row.get("labels", ""))
        full = ""
        if not rel:
            problem = "empty path"
        elif problem is None:
            full, problem = _csv_path(out.root, rel, out.follow_symlinks)
        if problem:
            errors.append(f"line {line}: {problem}")
            continue
        for name in names:
            spelling.setdefault(" ".join(name.casefold().split()), {}).setdefault(name, line)
        out.samples.append(Sample(full, join_labels(names), _csv_split(row)))
    for variants in spelling.values():
        if len(variants) > 1:
            (first, at), *others = sorted(variants.items(), key=lambda kv: kv[1])
            errors += [
                f"line {line}: class {name!r} differs from {first!r} (line {at}) only in case or spacing; "
                "use one spelling"
                for name, line in others
            ]
    if errors:
        more = f"; and {len(errors) - MAX_ROW_ERRORS} more" if len(errors) > MAX_ROW_ERRORS else ""
        raise DataError(
            f"CSV {str(path)!r} has {len(errors)} bad row(s): " + "; ".join(errors[:MAX_ROW_ERRORS]) + more
        )
    if not out.samples:
        raise DataError(f"CSV {str(path)!r} lists no images")
    out.class_names = sorted({name for s in out.samples for name in label_set(s.label)})
    return out


def load_sources(data, follow_symlinks: bool = False) -> DatasetSource:
    """:func:`load_source` of one dataset, or of several merged (``imagerec train A B``): their images are joined
    and class folders of the same name are one class.

    A dataset with fixed splits keeps them; the images of one without join the train part (the split carves val
    and test from it only where no dataset fixes them): ``imagerec train builtin:fashion-mnist reviewed/`` adds
    the reviewed pictures to training and keeps Fashion-MNIST's test set the fixed one the gate compares on.

    Raises:
        DataError: the datasets mix single- and multi-label.
    """
    if isinstance(data, (str, os.PathLike)):
        return load_source(data, follow_symlinks)
    parts = [load_source(d, follow_symlinks) for d in data]
    if len(parts) == 1:
        return parts[0]
    tasks = [p.task for p in parts]
    if len(set(tasks)) > 1:
        raise DataError(
            f"datasets {[str(d) for d in data]} differ in task ({tasks}); merge datasets of one kind"
        )
    merged = DatasetSource(root=parts[0].root, kind=parts[0].kind, samples=[], class_names=[],
                           follow_symlinks=follow_symlinks, task=parts[0].task)  # fmt: skip
    for part in parts:
        merged.samples += part.samples
        merged.ignored_files += part.ignored_files
        merged.invalid += part.invalid
    merged.class_names = sorted({name for part in parts for name in part.class_names})
    return merged
