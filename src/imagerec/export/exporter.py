"""Export a trained run to SavedModel, LiteRT or ONNX, with an automatic parity check against the Keras model.

Example:
    >>> clf = Classifier.load("runs/fmnist")
    >>> path = clf.export(format="tflite", quantize="int8")   # runs/fmnist/exports/tflite-int8/
    >>> Classifier.load(path / "model.tflite").predict("shoe.png")
    >>> clf.export(format="onnx", out="model.onnx")   # one file, sidecars beside it: model.onnx.labels.json...

Each export is built in a temporary folder beside its destination, checked on the run's test split, and only
renamed into place when parity passes (see :mod:`imagerec.export.parity`); ``export.json`` records it all.
Every artifact returns the probabilities and, as a second output, the embedding (``with_embedding``); the run's
``reference.npz`` and ``calibration.json`` travel with it, so an export answers with the run's ``ood_score``.
Exports made into the run (no ``out``) are then timed briefly against the Keras model, and the fastest is recorded
in ``RUN/exports/runtime.json``: ``Classifier.load(run)`` (runtime ``auto``) uses it from then on when it answers
like the Keras model (unquantized, same top-1 on every parity image; ``auto-quantized`` may pick any that passed)
(see :func:`imagerec.export.benchmark.quick_default_runtime`; ``imagerec benchmark`` measures thoroughly).

A failing export (a converter error, a failed parity check) is one line naming it; with ``format="all"`` the
others are still made and published, then :class:`ExportFailures` lists the ones that failed.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from imagerec.errors import ImagerecError
from imagerec.export import tflite
from imagerec.export.formats import (
    EXPORT_JSON,
    FORMATS,
    ExportError,
    ExportFailures,
    check_quantization,
    export_name,
    get_format,
    tree_sha256,
)
from imagerec.export.publish import (
    check_out,
    copy_sidecars,
    is_file_destination,
    publish_dir,
    publish_file,
)
from imagerec.quiet import quiet_stderr
from imagerec.run import RunDir
from imagerec.runtime.exported import HASHED_SIDECARS
from imagerec.settings import EXPORT_FORMAT, PARITY_IMAGES
from imagerec.utils import atomic_write_json, sha256_file

REPRESENTATIVE_IMAGES = 200
PARITY_BATCH = 64
log = logging.getLogger(__name__)


def plan(format: str, quantize: str | None, out=None) -> list[tuple[str, str]]:  # noqa: A002 - the CLI's word
    """The (format, quantization) pairs one export call produces (``all`` = every row of the table).

    Raises:
        ExportError: unknown format or quantization, or an ``out`` that cannot hold them (see ``publish``).
    """
    if format == "all":
        if quantize in (None, "", "all"):
            pairs = [(f.name, q) for f in FORMATS.values() for q in f.quantizations]
        else:
            pairs = [
                (f.name, check_quantization(f, quantize))
                for f in FORMATS.values()
                if quantize in f.quantizations
            ] or [("tflite", check_quantization(FORMATS["tflite"], quantize))]
    else:
        fmt = get_format(format)
        pairs = [(fmt.name, check_quantization(fmt, quantize or "none"))]
    check_out(pairs, out)
    return pairs


def export_run(
    classifier,
    format: str = EXPORT_FORMAT,  # noqa: A002
    quantize: str | None = None,
    out: str | os.PathLike | None = None,
    parity_images: int = PARITY_IMAGES,
    representative_images: int = REPRESENTATIVE_IMAGES,
) -> Path:
    """Export ``classifier``'s run and check parity; return the export directory (``all``: their parent).

    Args:
        classifier: a :class:`imagerec.Classifier` loaded from a run directory.
        format: ``savedmodel``, ``tflite``, ``onnx`` or ``all``.
        quantize: ``none`` (default), ``float16``, ``dynamic`` or ``int8`` (LiteRT only). With ``all`` and no
            quantization, every LiteRT quantization is exported too.
        out: the export directory (default ``RUN/exports/<format>[-<quantize>]``); with ``all``, their parent.
            A path ending in the format's suffix (``model.tflite``, ``model.onnx``) is written as that file, with
            its sidecars beside it (``model.tflite.labels.json``...).
        parity_images: at most this many test images are compared.
        representative_images: at most this many training images calibrate int8.

    Exports into the run (``out`` not given) also update ``RUN/exports/runtime.json``, the runtime that
    ``Classifier.load(run)`` picks by default, from a quick latency measurement (unless ``imagerec benchmark``
    already measured them).

    Raises:
        ExportError: unknown format/quantization, int8 with no readable training images, no test images to check
            parity on, or parity below the threshold (nothing is published then).
        ExportFailures: some of the exports failed (with ``all``, after trying every one; the others are
            published); ``.failures`` maps each export name to its one-line reason, ``.records`` the ones made.
    """
    return Path(export_records(classifier, format, quantize, out, parity_images, representative_images)[0])


def export_records(classifier, format=EXPORT_FORMAT, quantize=None, out=None, parity_images=PARITY_IMAGES,  # noqa: A002
                   representative_images=REPRESENTATIVE_IMAGES) -> tuple[Path, list[dict[str, Any]]]:  # fmt: skip
    """Like :func:`export_run`, also returning each export's ``export.json`` record (for the CLI's table)."""
    pairs = plan(format, quantize, out)
    run_dir = RunDir(classifier.run_dir.path)
    if not run_dir.model.exists():
        raise ExportError(
            f"{str(run_dir.path)!r} is not a run directory (no model.keras); export from the run"
        )
    run_dir.require()
    from imagerec.runtime.keras import KerasRuntime

    model = (
        classifier.model
        if classifier.runtime == "keras" and classifier.model is not None
        else run_dir.load_model()
    )
    keras_fn = KerasRuntime(model, classifier.image_size, classifier.channels)  # timed as the keras runtime
    # Exports are made from the float32 twin (with the embedding as a second output) and checked against it: a
    # mixed_bfloat16 run's Keras runtime rounds every layer to bf16, so a float32 export that computes the
    # network exactly differed from it on 2 of 1,000 parity images (probabilities by up to 0.035), and `auto`
    # never picked a 7x faster export of a default run.
    twin = float32_model(model)
    reference_fn = (
        keras_fn if twin is model else KerasRuntime(twin, classifier.image_size, classifier.channels)
    )
    check = parity_data(run_dir, reference_fn, parity_images)
    model = export_model(twin)
    parent = Path(out) if out is not None and format == "all" else run_dir.exports
    records, failures = [], {}
    for fmt, q in pairs:
        dest = Path(out) if out is not None and format != "all" else parent / export_name(fmt, q)
        try:
            with quiet_stderr():  # converters print their settings and deprecation notices
                records.append(_export_one(classifier, model, fmt, q, dest, check, representative_images))
        except Exception as exc:  # noqa: BLE001 - converters fail in many ways; the other formats go on
            failures[export_name(fmt, q)] = _failure_line(export_name(fmt, q), exc)
            log.debug("%s export failed", export_name(fmt, q), exc_info=True)
    if out is None and records:  # the run's own exports: time them so that runtime ``auto`` picks the fastest
        _record_default_runtime(classifier, keras_fn, records, check.images)
    if failures:
        raise ExportFailures(failures, records, str(parent))
    return (parent if format == "all" else Path(records[0]["path"])), records


def _failure_line(name: str, exc: Exception) -> str:
    """One line saying which export failed and why (our own errors already say it; others get a prefix)."""
    if isinstance(exc, ExportError) and str(exc).startswith(name):
        return str(exc)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = text if len(text) <= 300 else text[:297] + "..."
    kind = "" if isinstance(exc, ExportError) else f"{type(exc).__name__}: "
    return f"{name} export failed: {kind}{text}; nothing was published for it"


def export_model(model):
    """The network every export writes: ``with_embedding(model)`` (probabilities, then the embedding), or the
    model itself when it has no embedding (no ``logits`` layer: not built by the registry)."""
    from imagerec.openworld.features import with_embedding

    try:
        return with_embedding(model)
    except ImagerecError:
        return model


def parity_data(run_dir: RunDir, keras_fn, parity_images: int):
    """The Keras model's answers on the run's held-out images, and the run's OOD reference: what exports match.

    Raises:
        ExportError: the run has no readable test or val image.
        RunError: the run's ``reference.npz`` is unreadable (rebuilt by ``imagerec calibrate``).
    """
    from imagerec.export.parity import ParityData, evaluation_images, run_spec
    from imagerec.openworld.reference import Reference
    from imagerec.runtime import predict_in_batches
    from imagerec.utils import read_json

    images, _, split = evaluation_images(run_dir, parity_images)
    if not len(images):
        raise ExportError(
            f"run {str(run_dir.path)!r}: no readable test or val images in manifest.csv to check parity on; "
            "restore the dataset files at the paths in the manifest"
        )
    probs, embedding = predict_in_batches(keras_fn, images, PARITY_BATCH, embedding=True)
    reference = Reference.load(run_dir.reference) if run_dir.reference.is_file() else None
    calibration = read_json(run_dir.calibration) if run_dir.calibration.is_file() else {}
    thresholds = run_spec(run_dir).get("thresholds")  # a multi-label run's: label sets are compared
    ood_threshold = calibration.get("ood_threshold")
    return ParityData(images, probs, embedding, split, reference, ood_threshold, thresholds)


def _record_default_runtime(classifier, keras_fn, records: list[dict[str, Any]], images) -> None:
    from imagerec.export.benchmark import quick_default_runtime

    written = [export_name(r["format"], r["quantization"]) for r in records]
    quick_default_runtime(classifier.run_dir.path, keras_fn, written, images)


def _export_one(
    classifier, model, fmt_name: str, quantize: str, dest: Path, check, representative_images: int
):
    from imagerec.export.parity import run_spec, split_images

    fmt = FORMATS[fmt_name]
    spec = run_spec(classifier.run_dir)
    representative = None
    if quantize == "int8":
        representative, _ = split_images(classifier.run_dir, "train", representative_images)
        if not len(representative):
            raise ExportError(
                f"int8 quantization needs training images to calibrate, but no train row of "
                f"{str(classifier.run_dir.manifest)!r} points to a readable image (moved or deleted?); restore "
                "them, or use --quantize dynamic (no calibration needed)"
            )
    as_file = is_file_destination(dest, fmt)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        artifact = tmp / fmt.artifact
        module = fmt.load_module()
        module.export_artifact(model, spec, quantize, artifact, representative)
        runtime = module.Runtime(
            artifact, None, {"image_size": spec["image_size"], "channels": spec["channels"]}
        )
        result = _check(runtime, check, quantize)
        record = _record(classifier, fmt_name, quantize, artifact, spec, result)
        record["artifact"] = dest.name if as_file else fmt.artifact
        if not result["passed"]:
            raise ExportError(
                f"{export_name(fmt_name, quantize)} export failed its parity check: {_parity_failure(result)}; "
                f"nothing was written to {str(dest)!r}"
            )
        copy_sidecars(classifier.run_dir.path, tmp)
        record["sidecars"] = {n: sha256_file(tmp / n) for n in HASHED_SIDECARS if (tmp / n).is_file()}
        atomic_write_json(tmp / EXPORT_JSON, record)
        if as_file:
            publish_file(tmp, fmt, dest)
        else:
            publish_dir(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    record["path"] = str(dest)
    return record


def _check(runtime, check, quantize: str) -> dict[str, Any]:
    from imagerec.export.parity import check as parity_check
    from imagerec.runtime import predict_in_batches

    probs, embedding = predict_in_batches(runtime, check.images, PARITY_BATCH, embedding=True)
    return parity_check(check, probs, embedding, quantize)


def _parity_failure(result: dict[str, Any]) -> str:
    """Why a parity record failed, in words: the top-1 (label-set) agreement, else the embedding's similarity."""
    n, split = result["num_images"], result["split"]
    multilabel = result.get("task") == "multilabel"
    what = "label-set agreement at the run's thresholds" if multilabel else "top-1 agreement"
    effective = result.get(f"{'label_set' if multilabel else 'top1'}_agreement_excluding_ties", 0.0)
    if effective < result["threshold"]:
        return (
            f"{what} {effective:.2%} (near-ties excluded) < {result['threshold']:.0%} on {n} {split} images "
            f"(max prob diff {result.get('max_abs_prob_diff')})"
        )
    emb = result["embedding"]
    if not emb["present"]:
        return "the artifact has no embedding output, but the Keras model has one"
    return (
        f"embedding cosine similarity {emb['cosine_mean']:.4f} (mean; min {emb['cosine_min']:.4f}) < "
        f"{emb['threshold']} on {n} {split} images"
    )


def _record(classifier, fmt_name, quantize, artifact: Path, spec, result) -> dict[str, Any]:
    import tensorflow as tf

    size, channels = spec["image_size"], spec["channels"]
    in_dtype = tflite.input_dtype(artifact) if fmt_name == "tflite" else "float32"
    record: dict[str, Any] = {
        "format": fmt_name,
        "quantization": quantize,
        "artifact": artifact.name,
        "sha256": tree_sha256(artifact),
        "size_bytes": _size(artifact),
        "input": {
            "name": "image",
            "shape": [None, size, size, channels],
            "dtype": in_dtype,
            "range": "0..255",
        },
        "output": {"name": "probabilities", "shape": [None, len(spec["labels"])], "dtype": "float32"},
        "preprocessing": {
            "decode": "imagerec.data.images.load_image (Pillow; EXIF applied, alpha on white, first frame)",
            "image_size": size,
            "channels": channels,
            "resize": spec["resize"],
            "pixels": "0..255, rescaled inside the model",
        },
        "labels": spec["labels"],
        **multilabel_fields(spec),
        "source_run": str(classifier.run_dir.path.resolve()),
        "source_model_sha256": sha256_file(classifier.run_dir.model),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"tensorflow": tf.__version__},
        "parity": result,
    }
    embedding = result.get("embedding") or {}
    if embedding.get("present"):  # the second output (the first stays ``output``, as before embeddings)
        record["embedding_output"] = {
            "name": "embedding",
            "shape": [None, embedding["dims"]],
            "dtype": "float32",
            "normalised": "L2 (the input of the logits layer); ood_score = reference.npz's score of it",
        }
    if fmt_name == "onnx":
        from imagerec.export.onnx import OPSET

        record["opset"] = OPSET
    if fmt_name == "savedmodel":
        outputs = "probabilities, labels" + (", embedding" if embedding.get("present") else "")
        record["signatures"] = {
            "serving_default": f"images: string [N] (encoded JPEG/PNG/...) -> {outputs}",
            "serving_pixels": f"pixels: float32 [N,{size},{size},{channels}] -> {outputs}",
        }
    return record


def multilabel_fields(spec: dict[str, Any]) -> dict[str, Any]:
    """What export.json adds for a multi-label run: its task and per-class thresholds (the probabilities are
    sigmoid outputs; a class is in an image's label set at or above its threshold)."""
    if spec.get("thresholds") is None:
        return {}
    return {"task": "multilabel", "thresholds": dict(zip(spec["labels"], spec["thresholds"], strict=True))}


def _float32_config(obj: Any) -> Any:
    if isinstance(obj, dict):
        if obj.get("class_name") == "DTypePolicy" and str(obj.get("config", {}).get("name", "")).startswith(
            "mixed_"
        ):
            return {**obj, "config": {**obj["config"], "name": "float32"}}
        return {k: _float32_config(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_float32_config(v) for v in obj]
    if isinstance(obj, str) and obj.startswith("mixed_"):
        return "float32"
    return obj


def float32_model(model):
    """The same network computing in float32 (a ``mixed_bfloat16`` run's model is rebuilt; weights are float32).

    bfloat16 compute has no LiteRT/ONNX kernels, and exports are meant for CPUs and phones without bf16 units.
    """
    config = model.get_config()
    clean = _float32_config(config)
    if clean == config:
        return model
    rebuilt = model.__class__.from_config(clean)
    rebuilt.set_weights(model.get_weights())
    return rebuilt


def _size(path: Path) -> int:
    return (
        path.stat().st_size
        if path.is_file()
        else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    )


__all__ = [
    "export_run",
    "export_records",
    "plan",
    "float32_model",
    "FORMATS",
    "ExportError",
    "ExportFailures",
]
