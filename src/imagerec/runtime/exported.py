"""Exported artifacts as runtimes: verify an export directory, find a run's export, resolve ``auto``.

An export directory (written by :mod:`imagerec.export`) is loaded only when its artifact's sha256 matches its
``export.json`` and its ``labels.json`` / ``config.json`` sidecars are present.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from imagerec.export.formats import (
    EXPORT_JSON,
    FORMATS,
    ExportError,
    export_name,
    get_format,
    is_export_dir,
    tree_sha256,
)
from imagerec.run import RunDir
from imagerec.utils import read_json

RUNTIME_RECORD = "runtime.json"  # RUN/exports/runtime.json: the runtime ``auto`` picks (export, benchmark)


def resolve_artifact(path: str | Path) -> Path:
    """The export directory of ``path`` (an export directory, or the artifact inside one), or raise."""
    path = Path(path)
    if path.is_file() and path.suffix in (".tflite", ".onnx"):
        return path.parent
    if path.is_dir() and (path / "saved_model.pb").is_file():
        return path.parent
    if path.is_dir() and any((path / f.artifact).exists() for f in FORMATS.values()):
        return path
    raise ExportError(
        f"{str(path)!r} is not an exported artifact; expected a .tflite or .onnx file, a SavedModel folder, "
        "or an export directory written by 'imagerec export'"
    )


def verify_export(export_dir: Path) -> dict[str, Any]:
    """Read ``export.json`` and check the labels sidecar and the artifact's sha256; return the record."""
    export_dir = Path(export_dir)
    record_path = export_dir / EXPORT_JSON
    if not record_path.is_file():
        raise ExportError(f"{str(export_dir)!r}: {EXPORT_JSON} is missing; re-export with 'imagerec export'")
    try:
        record = read_json(record_path)
        fmt = get_format(record["format"])
        expected = record["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ExportError(
            f"{str(record_path)!r}: unreadable export record; re-export with 'imagerec export'"
        ) from None
    for name in ("labels.json", "config.json"):
        if not (export_dir / name).is_file():
            raise ExportError(
                f"{str(export_dir)!r}: {name} is missing beside the artifact (labels travel with it); re-export"
            )
    artifact = export_dir / fmt.artifact
    if not artifact.exists():
        raise ExportError(f"{str(artifact)!r} is missing; re-export with 'imagerec export'")
    actual = tree_sha256(artifact)
    if actual != expected:
        raise ExportError(
            f"{str(artifact)!r}: sha256 mismatch (export.json says {expected[:16]}..., file is {actual[:16]}...); "
            "refusing to load a modified artifact"
        )
    return record


def find_export(run_path: Path, runtime: str) -> Path:
    """The export directory inside ``RUN/exports`` for a runtime name (``tflite``, ``tflite-int8``, ``onnx``...).

    A bare format name picks its unquantized export, else the only other one that exists.
    """
    exports = Path(run_path) / "exports"
    exact = exports / runtime
    if is_export_dir(exact):
        return exact
    if runtime in FORMATS:
        found = sorted(p for p in exports.glob(f"{runtime}-*") if is_export_dir(p))
        if found:
            return found[0]
    available = sorted(p.name for p in exports.glob("*") if is_export_dir(p)) if exports.is_dir() else []
    raise ExportError(
        f"run {str(run_path)!r} has no {runtime!r} export (found: {', '.join(available) or 'none'}); "
        f"create it with 'imagerec export {run_path} --format {runtime.split('-')[0]}'"
    )


def open_runtime(export_dir: Path, info: dict[str, Any]) -> Callable:
    """Verify an export directory and return its runtime callable."""
    record = verify_export(export_dir)
    fmt = FORMATS[record["format"]]
    return fmt.load_module().Runtime(Path(export_dir) / fmt.artifact, record, info)


def is_artifact_path(path: str | Path) -> bool:
    """True for a ``.tflite``/``.onnx`` file, a SavedModel folder, or an export directory."""
    path = Path(path)
    if path.suffix in (".tflite", ".onnx"):
        return True
    return path.is_dir() and ((path / "saved_model.pb").is_file() or is_export_dir(path))


def _check_runtime_name(runtime: str) -> None:
    base, _, quant = runtime.partition("-")
    if runtime in ("auto", "keras") or (
        base in FORMATS and (not quant or quant in FORMATS[base].quantizations)
    ):
        return
    raise ExportError(
        f"unknown runtime {runtime!r}; expected auto, keras, {', '.join(FORMATS)} or an export name such as "
        "tflite-int8, tflite-float16, tflite-dynamic"
    )


def resolve_runtime(run_path: Path, runtime: str) -> Path | None:
    """The export directory that ``runtime`` names for a run, or None for the Keras model."""
    _check_runtime_name(runtime)
    if runtime == "keras":
        return None
    if runtime == "auto":
        record = Path(run_path) / "exports" / RUNTIME_RECORD
        try:
            chosen = read_json(record)["runtime"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if chosen == "keras" or not is_export_dir(Path(run_path) / "exports" / chosen):
            return None
        return Path(run_path) / "exports" / chosen
    return find_export(run_path, runtime)


def open_export_runtime(path: str | Path, runtime: str = "auto", run_dir=None):
    """Verify an exported artifact and open its runtime.

    Returns:
        ``(run_dir, name, runtime_fn, version)``: a :class:`RunDir` whose config/labels describe the artifact
        (the export directory itself, or ``run_dir`` when given), the runtime name (``tflite-int8``), the
        callable, and the first 12 hex digits of the artifact's sha256.
    """
    export_dir = resolve_artifact(path)
    record = verify_export(export_dir)
    name = export_name(record["format"], record.get("quantization", "none"))
    if runtime not in ("auto", record["format"], name, export_dir.name):
        raise ExportError(
            f"{str(path)!r} is a {name} export; it cannot run with runtime {runtime!r} (use {name})"
        )
    sidecar = RunDir(export_dir)
    if sidecar.read_labels() != record.get("labels"):
        raise ExportError(
            f"{str(export_dir)!r}: labels.json does not match the labels in export.json; re-export"
        )
    config = sidecar.read_config()
    info = {
        "image_size": int(config["image_size"]),
        "channels": int(config["channels"]),
        "run_dir": export_dir,
    }
    fmt = FORMATS[record["format"]]
    runtime_fn = fmt.load_module().Runtime(export_dir / fmt.artifact, record, info)
    return (run_dir or sidecar), name, runtime_fn, record["sha256"][:12]
