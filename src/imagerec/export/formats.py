"""THE table of export formats, the layout of an export directory, and the runtimes that run each format.

An export directory is self-contained (copy it to another machine and ``Classifier.load`` it)::

    EXPORT/
      model.tflite | model.onnx | saved_model/ | openvino_model/   the artifact
      export.json       format, quantization, input shape/dtype, preprocessing, labels, source run, sha256, parity
      labels.json       class names in output order (the sidecar every runtime reads)
      config.json       the run's preprocessing contract (image_size, channels, resize, class_names)
      calibration.json  copied from the run when it has one (temperature, thresholds, ood_threshold)
      reference.npz     the run's training-embedding reference, copied when it has one (the OOD score's data)
      thresholds.json   a multi-label run's per-class thresholds, copied when it has them

The artifact has two outputs: ``probabilities`` (first, ``[N, K]``, as before) and ``embedding`` (``[N, D]``,
L2-normalised, see :mod:`imagerec.openworld.features`), so every runtime computes the run's ``ood_score``.
An export written before embeddings has ``probabilities`` only; its runtime answers without ``ood_score``.

Inside a run, exports live in ``RUN/exports/<format>[-<quantization>]/`` (``tflite``, ``tflite-int8``, ...).
Each format's module has ``export_artifact(...)`` and a ``Runtime`` class; :mod:`imagerec.runtime` opens and
verifies exported artifacts and resolves runtime names.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from imagerec.errors import ImagerecError
from imagerec.utils import sha256_file

QUANTIZATIONS = ("none", "float16", "dynamic", "int8")
EXPORT_JSON = "export.json"
PROBABILITIES = "probabilities"  # the artifact's first output; openworld.features.EMBEDDING the second


class ExportError(ImagerecError):
    """An export could not be made, failed its parity check, or an exported artifact was refused."""

    code = "export_failed"


class ExportFailures(ExportError):
    """Some exports of one call failed; the others were made and published.

    Attributes:
        failures: export name (``onnx``, ``tflite-int8``) -> one line saying why it failed.
        records: the ``export.json`` records of the exports that were published.
    """

    def __init__(self, failures: dict[str, str], records: list[dict], where: str):
        self.failures, self.records = dict(failures), list(records)
        if len(failures) == 1 and not records:
            message = next(iter(failures.values()))
        else:
            total = len(failures) + len(records)
            message = (
                f"{len(failures)} of {total} exports failed ({', '.join(failures)}); "
                + (f"the other {len(records)} were published in {where!r}: " if records else "")
                + "; ".join(failures.values())
            )
        super().__init__(message)


@dataclass(frozen=True)
class ExportFormat:
    name: str
    artifact: str  # file or folder name inside the export directory
    quantizations: tuple[str, ...]
    module: str  # imagerec.export.<module>: export_artifact(...) and Runtime
    description: str

    def load_module(self):
        return importlib.import_module(f"imagerec.export.{self.module}")


FORMATS: dict[str, ExportFormat] = {
    f.name: f
    for f in (
        ExportFormat(
            "savedmodel", "saved_model", ("none",), "savedmodel",
            "TensorFlow SavedModel for TF Serving: signatures serving_default (encoded image bytes) and "
            "serving_pixels (float32 pixels), preprocessing inside, labels returned",
        ),
        ExportFormat(
            "tflite", "model.tflite", QUANTIZATIONS, "tflite",
            "LiteRT flatbuffer (float32, float16, dynamic-range or full-integer int8), run with ai_edge_litert",
        ),
        ExportFormat(
            "onnx", "model.onnx", ("none", "int8"), "onnx",
            "ONNX (tf2onnx, opset 17; int8: ONNX Runtime QDQ), run with onnxruntime",
        ),
        ExportFormat(
            "openvino", "openvino_model", ("none", "int8"), "openvino",
            "OpenVINO IR (model.xml + model.bin; float32, or int8 by NNCF), run with openvino on CPU/GPU/NPU",
        ),
    )
}  # fmt: skip


def get_format(name: str) -> ExportFormat:
    if name not in FORMATS:
        raise ExportError(f"unknown export format {name!r}; expected one of {', '.join(FORMATS)} or all")
    return FORMATS[name]


def check_quantization(fmt: ExportFormat, quantize: str) -> str:
    quantize = "none" if quantize in (None, "", "float32") else quantize
    if quantize not in QUANTIZATIONS:
        raise ExportError(f"unknown quantization {quantize!r}; expected one of {', '.join(QUANTIZATIONS)}")
    if quantize not in fmt.quantizations:
        raise ExportError(
            f"format {fmt.name!r} does not support quantization {quantize!r} (it supports: "
            f"{', '.join(fmt.quantizations)}); use --format tflite for float16, dynamic or int8 (onnx and openvino: int8)"
        )
    return quantize


def export_name(fmt: str, quantize: str) -> str:
    """The export directory name inside ``RUN/exports``: ``tflite``, ``tflite-int8``, ``onnx``, ``savedmodel``."""
    return fmt if quantize in (None, "none") else f"{fmt}-{quantize}"


def model_outputs(model, x) -> tuple:
    """``(probabilities, embedding or None)`` of a model with one output or two (``with_embedding``'s)."""
    out = model(x, training=False)
    if isinstance(out, (list, tuple)):
        return out[0], (out[1] if len(out) > 1 else None)
    return out, None


def tree_sha256(path: Path) -> str:
    """sha256 of a file, or of a folder as the sorted list of (relative path, file sha256)."""
    import hashlib

    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{f.relative_to(path).as_posix()}\0{sha256_file(f)}\n".encode())
    return digest.hexdigest()


def is_export_dir(path: Path) -> bool:
    return (Path(path) / EXPORT_JSON).is_file()
