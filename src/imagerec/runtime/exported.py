"""Exported artifacts as runtimes: verify an export, find a run's export, resolve ``auto``.

An export (written by :mod:`imagerec.export`) is loaded only when its artifact's sha256 matches its
``export.json``, its ``labels.json`` / ``config.json`` sidecars are present, and its ``reference.npz`` (the
out-of-distribution reference) matches the sha256 recorded for it. It is either an export directory
(``model.tflite``, ``export.json``, ``labels.json``... inside) or a single file with its sidecars beside it
(``--out model.tflite`` writes ``model.tflite``, ``model.tflite.export.json``, ``model.tflite.labels.json``...).

``auto`` never trades accuracy for speed silently: it picks the fastest of Keras and the exports that answer
like it (:func:`answers_like_keras`); ``auto-quantized`` may also pick a quantized export.
"""

from __future__ import annotations

import logging
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
from imagerec.utils import read_json, sha256_file

logger = logging.getLogger(__name__)

RUNTIME_RECORD = "runtime.json"  # RUN/exports/runtime.json: the runtime ``auto`` picks (export, benchmark)
AUTO_RUNTIMES = ("auto", "auto-quantized")
#: sidecars whose sha256 export.json records (``sidecars``) and loading checks: a modified one is refused
HASHED_SIDECARS = ("reference.npz",)
#: the files that make a folder an artifact: a SavedModel's, an OpenVINO IR's
FOLDER_MARKERS = ("saved_model.pb", "model.xml")
#: the formats whose artifact is one file, by suffix: ``--out model.tflite`` writes that file
FILE_SUFFIXES = {Path(f.artifact).suffix: f.name for f in FORMATS.values() if Path(f.artifact).suffix}


def sidecar(artifact: Path, name: str) -> Path:
    """A single-file export's sidecar ``name`` beside it: ``model.tflite`` -> ``model.tflite.labels.json``."""
    return Path(artifact).with_name(f"{Path(artifact).name}.{name}")


def is_file_export(path: str | Path) -> bool:
    """True for a ``.tflite``/``.onnx`` file written as a single-file export (its ``.export.json`` beside it)."""
    path = Path(path)
    return path.suffix in FILE_SUFFIXES and sidecar(path, EXPORT_JSON).is_file()


def _beside_artifact(run_file: property) -> property:
    """A run's file seen beside a single-file export: ``RUN/<name>`` -> ``<artifact>.<name>``."""
    return property(lambda self: sidecar(self.artifact, run_file.fget(self).name))


class FileExportSidecars(RunDir):
    """A single-file export's sidecars seen as a run directory (labels, config, calibration, the OOD reference and
    a multi-label run's thresholds beside the file: ``model.tflite.reference.npz``...)."""

    def __init__(self, artifact: str | Path):
        super().__init__(Path(artifact).parent)
        object.__setattr__(self, "artifact", Path(artifact))

    @property
    def model(self) -> Path:
        return self.artifact

    labels = _beside_artifact(RunDir.labels)
    config = _beside_artifact(RunDir.config)
    calibration = _beside_artifact(RunDir.calibration)
    reference = _beside_artifact(RunDir.reference)
    thresholds = _beside_artifact(RunDir.thresholds)


def answers_like_keras(record: dict[str, Any]) -> bool:
    """Whether ``auto`` may pick an export: unquantized, and it gave the Keras top-1 (a multi-label run: the Keras
    label set) on every parity image; Keras computing in float32 (a mixed_bfloat16 run's float32 twin, which the
    export was made from: the bf16 Keras runtime is itself an approximation of it).

    Such an export's accuracy on the parity split equals the Keras model's; a quantized export (or one with any
    disagreement, near-ties included) may be less accurate, so only ``auto-quantized`` picks it.
    """
    parity = record.get("parity") or {}
    agreement = "label_set_agreement" if parity.get("task") == "multilabel" else "top1_agreement"
    return (
        record.get("quantization", "none") == "none"
        and bool(parity.get("passed"))
        and parity.get(agreement) == 1.0
    )


def resolve_artifact(path: str | Path) -> Path:
    """The export of ``path``: an export directory (also for the artifact inside one), or a single-file export."""
    path = Path(path)
    if path.is_file() and is_file_export(path):
        return path
    if path.is_file() and path.suffix in FILE_SUFFIXES:
        return path.parent
    if is_artifact_folder(path):
        return path.parent
    if path.is_dir() and any((path / f.artifact).exists() for f in FORMATS.values()):
        return path
    raise ExportError(
        f"{str(path)!r} is not an exported artifact; expected a .tflite or .onnx file, a SavedModel or OpenVINO "
        "folder, or an export directory written by 'imagerec export'"
    )


def verify_export(export_dir: Path) -> dict[str, Any]:
    """Read ``export.json`` and check the labels sidecar and the artifact's sha256; return the record.

    ``export_dir`` is an export directory or a single-file export (see :func:`is_file_export`).
    """
    export_dir = Path(export_dir)
    if is_file_export(export_dir):
        return _verify(export_dir, sidecar(export_dir, EXPORT_JSON), FileExportSidecars(export_dir))
    return _verify(None, export_dir / EXPORT_JSON, RunDir(export_dir))


def _verify(file: Path | None, record_path: Path, sidecars: RunDir) -> dict[str, Any]:
    if not record_path.is_file():
        raise ExportError(
            f"{str(sidecars.path)!r}: {EXPORT_JSON} is missing; re-export with 'imagerec export'"
        )
    try:
        record = read_json(record_path)
        fmt = get_format(record["format"])
        expected = record["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ExportError(
            f"{str(record_path)!r}: unreadable export record; re-export with 'imagerec export'"
        ) from None
    for path in (sidecars.labels, sidecars.config):
        if not path.is_file():
            raise ExportError(
                f"{str(sidecars.path)!r}: {path.name} is missing beside the artifact (labels travel with it); "
                "re-export"
            )
    artifact = file or sidecars.path / fmt.artifact
    if not artifact.exists():
        raise ExportError(f"{str(artifact)!r} is missing; re-export with 'imagerec export'")
    actual = tree_sha256(artifact)
    if actual != expected:
        raise ExportError(
            f"{str(artifact)!r}: sha256 mismatch (export.json says {expected[:16]}..., file is {actual[:16]}...); "
            "refusing to load a modified artifact"
        )
    _verify_sidecars(record, sidecars)
    return record


def _verify_sidecars(record: dict[str, Any], sidecars: RunDir) -> None:
    """Refuse a hashed sidecar (the OOD reference) that differs from export.json's sha256; a missing one only
    means answers without ``ood_score``."""
    hashes = record.get("sidecars")
    hashes = hashes if isinstance(hashes, dict) else {}
    for name in HASHED_SIDECARS:
        expected = hashes.get(name)
        if expected is None:  # an export written before its sidecars were hashed
            continue
        path = getattr(sidecars, Path(name).stem)  # RunDir's property: ``reference`` for reference.npz
        if not path.is_file():
            logger.warning("%s is missing: the export answers without ood_score", path)
            continue
        if sha256_file(path) != expected:
            raise ExportError(
                f"{str(path)!r}: sha256 mismatch (export.json says {str(expected)[:16]}...); refusing to load a "
                "modified sidecar; restore it, delete it (answers without ood_score), or re-export"
            )


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


def artifact_of(export: Path, record: dict[str, Any]) -> Path:
    """The artifact of a verified export: the file itself, or ``<export dir>/<format's artifact name>``."""
    return Path(export) if is_file_export(export) else Path(export) / FORMATS[record["format"]].artifact


def open_runtime(export_dir: Path, info: dict[str, Any]) -> Callable:
    """Verify an export and return its runtime callable."""
    record = verify_export(export_dir)
    module = FORMATS[record["format"]].load_module()
    return module.Runtime(artifact_of(export_dir, record), record, info)


def is_artifact_path(path: str | Path) -> bool:
    """True for a ``.tflite``/``.onnx`` file, a SavedModel or OpenVINO folder, or an export directory."""
    path = Path(path)
    if path.suffix in FILE_SUFFIXES:
        return True
    return is_artifact_folder(path) or (path.is_dir() and is_export_dir(path))


def is_artifact_folder(path: Path) -> bool:
    """A folder artifact inside an export directory: a SavedModel, or an OpenVINO IR."""
    return path.is_dir() and any((path / marker).is_file() for marker in FOLDER_MARKERS)


def _check_runtime_name(runtime: str) -> None:
    base, _, quant = runtime.partition("-")
    if runtime in (*AUTO_RUNTIMES, "keras") or (
        base in FORMATS and (not quant or quant in FORMATS[base].quantizations)
    ):
        return
    raise ExportError(
        f"unknown runtime {runtime!r}; expected auto, auto-quantized, keras, {', '.join(FORMATS)} or an export "
        "name such as "
        "tflite-int8, tflite-float16, tflite-dynamic"
    )


def resolve_runtime(run_path: Path, runtime: str) -> Path | None:
    """The export directory that ``runtime`` names for a run, or None for the Keras model.

    ``auto`` is ``RUN/exports/runtime.json``'s ``runtime`` (the fastest that answers like Keras), and Keras when
    that export does not (a record written before this rule); ``auto-quantized`` is its ``quantized_runtime``
    (the fastest that passed parity).
    """
    _check_runtime_name(runtime)
    if runtime == "keras":
        return None
    export_dir = _named_export(run_path, runtime)
    if export_dir is None or of_this_model(run_path, export_dir):
        return export_dir
    if runtime in AUTO_RUNTIMES:
        logger.warning(
            "%s: the recorded runtime is an export of an older model.keras; answering with Keras", run_path
        )
        return None
    raise ExportError(
        f"{str(export_dir)!r} was exported from an older model.keras of {str(run_path)!r} (the run was trained "
        f"again since); re-export with 'imagerec export {run_path} --format {runtime.split('-')[0]}'"
    )


def of_this_model(run_path: Path, export_dir: Path) -> bool:
    """Whether an export of the run was made from the run's current ``model.keras`` (a resumed or extended
    training replaces it, and its old exports must not keep answering for it)."""
    current = RunDir(run_path).model_sha256()
    try:
        source = read_json(Path(export_dir) / EXPORT_JSON).get("source_model_sha256")
    except (OSError, ValueError, AttributeError):
        return False
    return current is None or source is None or source == current


def _named_export(run_path: Path, runtime: str) -> Path | None:
    if runtime in AUTO_RUNTIMES:
        try:
            record = read_json(Path(run_path) / "exports" / RUNTIME_RECORD)
            chosen = (
                record.get("quantized_runtime", record["runtime"]) if runtime != "auto" else record["runtime"]
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        export_dir = Path(run_path) / "exports" / str(chosen)
        if chosen == "keras" or not is_export_dir(export_dir):
            return None
        if runtime == "auto":
            try:
                if not answers_like_keras(read_json(export_dir / EXPORT_JSON)):
                    return None
            except (OSError, ValueError, AttributeError):
                return None
        return export_dir
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
    if runtime not in (*AUTO_RUNTIMES, record["format"], name, export_dir.name):
        raise ExportError(
            f"{str(path)!r} is a {name} export; it cannot run with runtime {runtime!r} (use {name})"
        )
    sidecars = FileExportSidecars(export_dir) if is_file_export(export_dir) else RunDir(export_dir)
    if sidecars.read_labels() != record.get("labels"):
        raise ExportError(f"{str(sidecars.labels)!r} does not match the labels in export.json; re-export")
    config = sidecars.read_config()
    info = {
        "image_size": int(config["image_size"]),
        "channels": int(config["channels"]),
        "run_dir": sidecars.path,
    }
    module = FORMATS[record["format"]].load_module()
    runtime_fn = module.Runtime(artifact_of(export_dir, record), record, info)
    return (run_dir or sidecars), name, runtime_fn, record["sha256"][:12]
