"""Every export returns the embedding as its second output, and carries the run's OOD reference and threshold, so
that ``Classifier.load(export)`` answers with the same ``ood_score`` as the run; older exports still answer."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from imagerec import Classifier
from imagerec.data.split import read_manifest, rows_for
from imagerec.errors import ImagerecError, RunError
from imagerec.export.formats import ExportError
from imagerec.export.parity import EMBEDDING_THRESHOLDS
from imagerec.utils import sha256_file

NAMES = ["savedmodel", "tflite", "tflite-float16", "tflite-dynamic", "tflite-int8", "onnx"]
#: how far an export's ood_score may be from the Keras run's (relative): Mahalanobis magnifies rounding (measured
#: on this tiny run: <= 0.02% float32, 0.12% float16, 1.1% dynamic, 6.6% int8)
OOD_TOLERANCE = {"none": 2e-3, "float16": 1e-2, "dynamic": 0.1, "int8": 0.25}


def _quantization(name: str) -> str:
    return name.partition("-")[2] or "none"


def _inputs(run: Path) -> list:
    """The run's test images, and one picture of none of the classes (noise) last."""
    paths = [r.path for r in rows_for(read_manifest(run / "manifest.csv"), "test")]
    return [*paths, np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)]


@pytest.fixture(scope="module")
def ood_exported(trained_run: Path, tmp_path_factory) -> tuple[Path, dict]:
    """A copy of ``trained_run`` calibrated (so it has an ``ood_threshold``), exported to every format."""
    from imagerec.export.exporter import export_records

    run = tmp_path_factory.mktemp("ood_exported") / "run"
    shutil.copytree(trained_run, run)
    Classifier.load(run, runtime="keras").calibrate(split="val")
    _, records = export_records(Classifier.load(run, runtime="keras"), "all")
    return run, {Path(r["path"]).name: r for r in records}


@pytest.fixture(scope="module")
def keras_answers(ood_exported):
    run, _ = ood_exported
    clf = Classifier.load(run, runtime="keras")
    assert clf.reference is not None and clf.ood_threshold is not None
    return clf, clf.embed(_inputs(run)), clf.predict(_inputs(run), threshold=0)


@pytest.mark.parametrize("name", NAMES)
def test_every_export_returns_the_keras_embedding(ood_exported, keras_answers, name):
    run, records = ood_exported
    _, want, _ = keras_answers
    record = records[name]
    parity = record["parity"]["embedding"]
    assert parity["present"] and parity["passed"] and parity["dims"] == want.shape[1]
    threshold = EMBEDDING_THRESHOLDS[_quantization(name)]  # None (int8): recorded, not a bar
    assert parity["threshold"] == threshold and (threshold is None or parity["cosine_mean"] >= threshold)
    assert record["embedding_output"]["shape"] == [None, want.shape[1]]
    got = Classifier.load(run / "exports" / name / record["artifact"]).embed(_inputs(run))
    cosine = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cosine.min() >= (0.95 if name == "tflite-int8" else 0.999), cosine.min()
    if _quantization(name) == "none":
        np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_predictions_from_an_export_carry_the_runs_ood_score(ood_exported, keras_answers, name):
    run, records = ood_exported
    keras, _, want = keras_answers
    folder = run / "exports" / name
    assert sha256_file(folder / "reference.npz") == records[name]["sidecars"]["reference.npz"]
    assert "ood" in records[name]["parity"] and records[name]["parity"]["ood"]["ood_threshold"] is not None
    for clf in (Classifier.load(folder / records[name]["artifact"]), Classifier.load(run, runtime=name)):
        assert clf.ood_threshold == keras.ood_threshold
        _assert_same_ood(
            clf.predict(_inputs(run), threshold=0), want, keras.ood_threshold, _quantization(name)
        )
    # with the calibrated thresholds on: the noise picture is "unknown" for its OOD score, on every runtime
    noise = Classifier.load(folder / records[name]["artifact"]).predict(_inputs(run)[-1])[0]
    assert noise.label == keras.predict(_inputs(run)[-1])[0].label == "unknown"
    assert noise.ood_score > keras.ood_threshold


def _assert_same_ood(got, want, threshold: float, quantize: str) -> None:
    """The same scores within the format's tolerance (relative, or of the threshold for scores near 0), and the
    same side of the threshold. int8 clips the activations of a foreign picture to the range calibrated on training
    images: its score stays far above the threshold but is not the same, so int8 compares values below it only."""
    ours, theirs = np.array([p.ood_score for p in got]), np.array([p.ood_score for p in want])
    tolerance = OOD_TOLERANCE[quantize]
    near = np.abs(theirs - threshold) <= tolerance * threshold  # may fall either side after rounding
    np.testing.assert_array_equal((ours > threshold)[~near], (theirs > threshold)[~near])
    compared = theirs <= threshold if quantize == "int8" else np.ones(len(theirs), bool)
    np.testing.assert_allclose(ours[compared], theirs[compared], rtol=tolerance, atol=tolerance * threshold)


def test_litert_keeps_probabilities_first_and_its_runtime_picks_outputs_by_name(ood_exported, tmp_path):
    from ai_edge_litert.interpreter import Interpreter
    from tensorflow.lite.tools import flatbuffer_utils

    from imagerec.export import tflite

    run, _ = ood_exported
    artifact = run / "exports" / "tflite" / "model.tflite"
    it = Interpreter(model_path=str(artifact))
    assert [d["name"] for d in it.get_output_details()] == ["probabilities", "embedding"]
    assert sorted(it.get_signature_list()["serving_default"]["outputs"]) == ["embedding", "probabilities"]
    # LiteRT gives no order guarantee: a flatbuffer with the outputs the other way round answers the same
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(artifact.read_bytes()))
    model.subgraphs[0].outputs = model.subgraphs[0].outputs[::-1]
    reversed_file = tmp_path / "reversed.tflite"
    reversed_file.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))
    assert Interpreter(model_path=str(reversed_file)).get_output_details()[0]["name"] == "embedding"
    images = np.stack([Classifier.load(run, runtime="keras").preprocess(p) for p in _inputs(run)])
    want = tflite.Runtime(artifact, num_threads=1).outputs(images)
    got = tflite.Runtime(reversed_file, num_threads=1).outputs(images)
    assert got[0].shape == (len(images), 3) and got[1].shape == want[1].shape
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_savedmodel_and_onnx_name_the_embedding_output(ood_exported):
    import onnxruntime as ort
    import tensorflow as tf

    run, _ = ood_exported
    loaded = tf.saved_model.load(str(run / "exports" / "savedmodel" / "saved_model"))
    for signature in ("serving_default", "serving_pixels"):
        assert set(loaded.signatures[signature].structured_outputs) == {
            "probabilities",
            "labels",
            "embedding",
        }
    session = ort.InferenceSession(
        str(run / "exports" / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    assert [o.name for o in session.get_outputs()] == ["probabilities", "embedding"]


def test_a_file_export_carries_the_reference_beside_it(ood_exported, keras_answers, tmp_path):
    from imagerec.export.exporter import export_records
    from imagerec.runtime.exported import FileExportSidecars

    run, _ = ood_exported
    keras, _, want = keras_answers
    dest = tmp_path / "deploy" / "model.onnx"
    _, (record,) = export_records(Classifier.load(run, runtime="keras"), "onnx", out=dest, parity_images=8)
    sidecars = FileExportSidecars(dest)
    assert sidecars.reference == tmp_path / "deploy" / "model.onnx.reference.npz"
    assert (
        sha256_file(sidecars.reference)
        == record["sidecars"]["reference.npz"]
        == sha256_file(run / "reference.npz")
    )
    assert json.loads(sidecars.calibration.read_text())["ood_threshold"] is not None
    _assert_same_ood(
        Classifier.load(dest).predict(_inputs(run), threshold=0), want, keras.ood_threshold, "none"
    )


def _export_without_embedding(monkeypatch) -> None:
    """Export the way imagerec did before embeddings: the plain model, probabilities only."""
    from imagerec.export import exporter

    original = exporter.parity_data
    monkeypatch.setattr(exporter, "export_model", lambda model: model)
    monkeypatch.setattr(exporter, "parity_data", lambda *a: dataclasses.replace(original(*a), embedding=None))


@pytest.mark.parametrize("fmt", ["tflite", "onnx", "savedmodel"])
def test_an_export_written_before_embeddings_answers_without_ood_score(run_copy, monkeypatch, fmt):
    from imagerec.export.exporter import export_records

    _export_without_embedding(monkeypatch)
    _, (record,) = export_records(Classifier.load(run_copy, runtime="keras"), fmt, parity_images=8)
    assert "embedding" not in record["parity"] and "embedding_output" not in record
    monkeypatch.undo()
    keras = Classifier.load(run_copy, runtime="keras")
    clf = Classifier.load(run_copy, runtime=fmt)
    paths = _inputs(run_copy)[:6]
    got, want = clf.predict(paths, threshold=0), keras.predict(paths, threshold=0)
    assert [p.label for p in got] == [p.label for p in want]
    assert all(p.ood_score is None for p in got) and all(p.ood_score is not None for p in want)
    assert clf.raw_outputs(np.stack([clf.preprocess(p) for p in paths]))[1] is None
    with pytest.raises(ImagerecError, match="returns no embedding"):
        clf.embed(paths)


def test_a_tampered_reference_sidecar_is_refused_and_never_unpickled(ood_exported, tmp_path):
    run, records = ood_exported
    folder = tmp_path / "onnx"
    shutil.copytree(run / "exports" / "onnx", folder)
    reference = folder / "reference.npz"
    marker = tmp_path / "unpickled"
    # an npz whose array is a pickled object that would create ``marker`` if it were ever unpickled
    np.savez(reference, sample=np.array([_Trap(str(marker))], dtype=object))
    with pytest.raises(ExportError, match="reference.npz.*sha256 mismatch.*modified sidecar"):
        Classifier.load(folder / "model.onnx")
    # without its recorded hash (an edited export.json) the file is still only read as plain arrays
    record = json.loads((folder / "export.json").read_text())
    del record["sidecars"]
    (folder / "export.json").write_text(json.dumps(record))
    clf = Classifier.load(folder / "model.onnx")
    with pytest.raises(RunError, match="not a readable embedding reference"):
        clf.predict(_inputs(run)[0])
    assert not marker.exists()
    # deleted (the hash still recorded): answers, without ood_score
    shutil.copyfile(run / "exports" / "onnx" / "export.json", folder / "export.json")
    reference.unlink()
    answer = Classifier.load(folder / "model.onnx").predict(_inputs(run)[0], threshold=0)[0]
    assert answer.ood_score is None and answer.label in records["onnx"]["labels"]


class _Trap:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))
