"""Where an export goes, and moving a checked export into place.

``--out`` is a folder (an export directory: ``model.tflite``, ``export.json``, ``labels.json``... inside) unless it
ends in the format's file suffix: ``--out model.tflite`` writes that file, with its sidecars beside it
(``model.tflite.export.json``, ``model.tflite.labels.json``, ``model.tflite.config.json`` and, when the run has
them, ``model.tflite.calibration.json``, ``model.tflite.reference.npz`` (the out-of-distribution reference) and
``model.tflite.thresholds.json`` (a multi-label run's)); ``Classifier.load("model.tflite")`` loads either layout.

Every file an export writes is readable like the artifact itself (``0666`` less the umask, usually ``0644``;
:func:`imagerec.utils.atomic_write_bytes` gives its files that mode).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from imagerec.export.formats import EXPORT_JSON, ExportError, ExportFormat
from imagerec.runtime.exported import FILE_SUFFIXES, sidecar

#: copied from the run when present (RunDir's file names; FileExportSidecars maps them beside a file export)
SIDECARS = ("labels.json", "config.json", "calibration.json", "reference.npz", "thresholds.json")


def is_file_destination(out: Path, fmt: ExportFormat) -> bool:
    """Whether ``out`` names the artifact file itself (``model.tflite``) rather than an export directory.

    Raises:
        ExportError: ``out`` ends in another format's suffix, or it is an existing folder named like a file.
    """
    out = Path(out)
    if out.suffix not in FILE_SUFFIXES:
        return False
    if FILE_SUFFIXES[out.suffix] != fmt.name:
        want = Path(fmt.artifact).suffix
        raise ExportError(
            f"--out {str(out)!r} ends in {out.suffix}, a {FILE_SUFFIXES[out.suffix]} file, but the format is "
            f"{fmt.name}; pass " + (f"a {want} file or " if want else "") + "a folder"
        )
    if out.is_dir():
        raise ExportError(
            f"--out {str(out)!r} is an existing folder (an earlier export written as a folder?); remove it, "
            "or pass another path"
        )
    return True


def check_out(pairs: list[tuple[str, str]], out: str | os.PathLike | None) -> None:
    """Refuse an ``out`` that cannot hold the planned exports, before anything is loaded."""
    from imagerec.export.formats import FORMATS

    if out is None:
        return
    if len(pairs) > 1 and Path(out).suffix in FILE_SUFFIXES:
        raise ExportError(
            f"--format all writes several exports into one folder; --out must be a folder, not {str(out)!r}"
        )
    is_file_destination(Path(out), FORMATS[pairs[0][0]])


def publish_dir(tmp: Path, dest: Path) -> None:
    """Move a checked export directory into place, replacing an older one only after the new one is complete."""
    old = dest.parent / f".{dest.name}.old-{os.getpid()}"
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)


def publish_file(tmp: Path, fmt: ExportFormat, dest: Path) -> None:
    """Move a checked single-file export into place: sidecars, then the artifact, then its ``export.json``.

    A reader in between sees the old record with a new artifact, and refuses it (sha256 mismatch) rather than
    loading a mismatched pair.
    """
    for name in SIDECARS:
        if (tmp / name).exists():
            os.replace(tmp / name, sidecar(dest, name))
        else:
            sidecar(dest, name).unlink(missing_ok=True)  # an older export's ones no longer apply
    os.replace(tmp / fmt.artifact, dest)
    os.replace(tmp / EXPORT_JSON, sidecar(dest, EXPORT_JSON))


def copy_sidecars(run_path: Path, dest: Path) -> None:
    """Copy the run's labels, config, calibration, OOD reference and thresholds into a (temporary) export directory."""
    for name in SIDECARS:
        src = Path(run_path) / name
        if src.exists():
            shutil.copyfile(src, dest / name)
