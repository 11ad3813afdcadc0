"""Every format and quantization, loaded with its OWN runtime (TensorFlow, ai_edge_litert, onnxruntime, openvino) and compared
with the Keras model on the run's real test images."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from imagefixtures import ALL_EXPORTS
from imagerec import Classifier
from imagerec.data.split import read_manifest, rows_for
from imagerec.export.exporter import float32_model, plan
from imagerec.export.formats import FORMATS, tree_sha256
from imagerec.export.parity import parity


def _test_split(run: Path):
    clf = Classifier.load(run, runtime="keras")
    rows = rows_for(read_manifest(clf.run_dir.manifest), "test")
    images = np.stack([clf.preprocess(r.path) for r in rows])
    # exports compute in float32 (a mixed_bfloat16 run is rebuilt in float32): compare with that Keras model
    keras_probs = float32_model(clf.model)(images.astype(np.float32), training=False).numpy()
    return clf, rows, images, keras_probs


def test_plan_covers_every_row_of_the_table():
    pairs = plan("all", None)
    assert {(f, q) for f, spec in FORMATS.items() for q in spec.quantizations} == set(pairs)
    assert plan("tflite", "int8") == [("tflite", "int8")]


def test_every_export_written_with_record_and_parity(exported):
    run, records = exported
    assert set(records) == ALL_EXPORTS
    for name, record in records.items():
        folder = run / "exports" / name
        on_disk = json.loads((folder / "export.json").read_text())
        assert on_disk["sha256"] == record["sha256"] and record["path"] == str(folder)
        assert on_disk["sha256"] == tree_sha256(folder / on_disk["artifact"])
        assert (
            json.loads((folder / "labels.json").read_text()) == on_disk["labels"] == ["blue", "green", "red"]
        )
        assert on_disk["parity"]["passed"] and on_disk["parity"]["split"] == "test"
        assert on_disk["parity"]["top1_agreement"] >= on_disk["parity"]["threshold"]
        assert on_disk["input"]["shape"] == [None, 32, 32, 3]
        assert on_disk["input"]["dtype"] == ("uint8" if name == "tflite-int8" else "float32")
    assert records["onnx"]["opset"] == 17
    assert not list((run / "exports").glob(".*tmp*")), "temporary export folders left behind"
    sizes = {n: r["size_bytes"] for n, r in records.items()}
    assert sizes["tflite-float16"] < 0.6 * sizes["tflite"] and sizes["tflite-int8"] < 0.35 * sizes["tflite"]
    assert sizes["onnx-int8"] < 0.5 * sizes["onnx"] and sizes["openvino-int8"] < 0.5 * sizes["openvino"]


def test_savedmodel_with_tensorflow_bytes_and_pixels(exported):
    import tensorflow as tf

    run, _ = exported
    clf, rows, images, keras_probs = _test_split(run)
    loaded = tf.saved_model.load(str(run / "exports" / "savedmodel" / "saved_model"))
    assert {"serving_default", "serving_pixels"} <= set(loaded.signatures)
    png_bytes = tf.constant([Path(r.path).read_bytes() for r in rows])
    out = loaded.signatures["serving_default"](images=png_bytes)
    # PNG is lossless and the images are already 32x32: TF's decode must match Pillow's exactly here.
    np.testing.assert_allclose(out["probabilities"].numpy(), keras_probs, atol=1e-5)
    labels = [s.decode() for s in out["labels"].numpy()]
    assert labels == [clf.labels[i] for i in keras_probs.argmax(1)]
    pixels = loaded.signatures["serving_pixels"](pixels=tf.constant(images, tf.float32))
    np.testing.assert_allclose(pixels["probabilities"].numpy(), keras_probs, atol=1e-5)


def test_savedmodel_bytes_signature_resizes_and_decodes_jpeg(exported):
    import io

    import tensorflow as tf
    from PIL import Image

    run, _ = exported
    clf, rows, _, _ = _test_split(run)
    buf = io.BytesIO()
    Image.open(rows[0].path).resize((57, 41)).convert("RGB").save(buf, "JPEG", quality=95)
    loaded = tf.saved_model.load(str(run / "exports" / "savedmodel" / "saved_model"))
    out = loaded.signatures["serving_default"](images=tf.constant([buf.getvalue()]))
    assert out["probabilities"].shape == (1, 3)
    want = clf.predict(buf.getvalue())[0]
    assert out["labels"].numpy()[0].decode() == want.label
    assert (
        abs(float(out["probabilities"].numpy().max()) - want.confidence) < 0.05
    )  # JPEG/resize rounding only


@pytest.mark.parametrize("name", ["tflite", "tflite-float16", "tflite-dynamic", "tflite-int8"])
def test_tflite_with_ai_edge_litert(exported, name):
    from ai_edge_litert.interpreter import Interpreter

    run, _ = exported
    _, _, images, keras_probs = _test_split(run)
    it = Interpreter(model_path=str(run / "exports" / name / "model.tflite"), num_threads=2)
    inp = it.get_input_details()[0]
    it.resize_tensor_input(inp["index"], [len(images), 32, 32, 3])
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    assert inp["dtype"] == (np.uint8 if name == "tflite-int8" else np.float32)
    assert out["dtype"] == np.float32
    if name == "tflite-int8":
        assert inp["quantization"] == (1.0, 0)  # raw pixels go in unchanged
    it.set_tensor(inp["index"], images.astype(inp["dtype"]))
    it.invoke()
    probs = it.get_tensor(out["index"])
    assert parity(keras_probs, probs, name.partition("-")[2] or "none", "test")["passed"]
    tolerance = {"tflite": 1e-5, "tflite-float16": 5e-3, "tflite-dynamic": 2e-2, "tflite-int8": 5e-2}[name]
    assert np.abs(probs - keras_probs).max() < tolerance


def test_onnx_with_onnxruntime(exported):
    import onnxruntime as ort

    run, _ = exported
    _, _, images, keras_probs = _test_split(run)
    session = ort.InferenceSession(
        str(run / "exports" / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    assert session.get_inputs()[0].name == "image"
    assert json.loads(session.get_modelmeta().custom_metadata_map["labels"]) == ["blue", "green", "red"]
    probs = session.run(None, {"image": images.astype(np.float32)})[0]
    np.testing.assert_allclose(probs, keras_probs, atol=1e-5)


def test_onnx_int8_is_qdq_and_answers_with_onnxruntime(exported):
    import onnx
    import onnxruntime as ort

    run, _ = exported
    _, _, images, keras_probs = _test_split(run)
    path = run / "exports" / "onnx-int8" / "model.onnx"
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probs, embedding = session.run(["probabilities", "embedding"], {"image": images.astype(np.float32)})
    assert parity(keras_probs, probs, "int8", "test")["passed"]
    assert np.abs(probs - keras_probs).max() < 0.1
    # the softmax and the embedding's normalisation stay float: no 1/255 steps, unit-length embeddings
    assert not np.allclose(probs * 255, np.round(probs * 255), atol=1e-3)
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, atol=1e-4)


@pytest.mark.parametrize("name", ["openvino", "openvino-int8"])
def test_openvino_with_openvino(exported, name):
    import openvino as ov

    run, _ = exported
    _, _, images, keras_probs = _test_split(run)
    core = ov.Core()
    ir = core.read_model(str(run / "exports" / name / "openvino_model" / "model.xml"))
    assert {n for o in ir.outputs for n in o.get_names()} >= {"probabilities", "embedding"}
    # int8: NNCF put FakeQuantize nodes in front of the convolutions and matrix products
    fake_quantize = sum(op.get_type_name() == "FakeQuantize" for op in ir.get_ops())
    assert (fake_quantize > 0) == (name == "openvino-int8")
    compiled = core.compile_model(ir, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    probs = compiled(images.astype(np.float32))["probabilities"]
    assert parity(keras_probs, probs, name.partition("-")[2] or "none", "test")["passed"]
    assert np.abs(probs - keras_probs).max() < (1e-4 if name == "openvino" else 0.1)


def test_openvino_runtime_is_thread_safe(exported):
    """One infer request per thread and batch shape: four threads at once, each with its own batch size (so shapes
    are compiled while the others infer), get their own batch's answers every time."""
    from imagerec.export.openvino import Runtime

    run, _ = exported
    _, _, images, _ = _test_split(run)
    images = np.resize(images, (12, *images.shape[1:]))
    want = Runtime(run / "exports" / "openvino" / "openvino_model")(images)
    runtime = Runtime(run / "exports" / "openvino" / "openvino_model")
    wrong: list[int] = []

    def work(i: int) -> None:
        rows = slice(i, i + 1 + i * 3)  # 1, 4, 7 and 9 (12 images) rows: four shapes, three compiled concurrently
        for _ in range(20):
            if not np.allclose(runtime(images[rows]), want[rows], atol=1e-5):
                wrong.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong
    assert sorted(runtime._compiled) == [1, 4, 8, 16]


def test_openvino_runtime_answers_every_batch_size_alike(exported):
    """Batches run on models compiled for static shapes (padded to a power of two) or, past 64, the dynamic one."""
    from imagerec.export.openvino import Runtime

    run, _ = exported
    _, _, images, _ = _test_split(run)
    images = np.resize(images, (70, *images.shape[1:]))
    runtime = Runtime(run / "exports" / "openvino" / "openvino_model")
    one_by_one = np.concatenate([runtime(images[i : i + 1]) for i in range(len(images))])
    for n in (3, 5, 64, 70):
        probs, embedding = runtime.outputs(images[:n])
        assert probs.shape == (n, 3) and embedding.shape[0] == n
        np.testing.assert_allclose(probs, one_by_one[:n], atol=1e-5)
    assert sorted(runtime._compiled) == [0, 1, 4, 8, 64]  # 0: the dynamic model (70 rows)


@pytest.mark.parametrize("name", sorted(ALL_EXPORTS))
def test_classifier_load_by_runtime_and_by_artifact(exported, name):
    run, records = exported
    clf, rows, _, keras_probs = _test_split(run)
    by_runtime = Classifier.load(run, runtime=name)
    artifact = run / "exports" / name / records[name]["artifact"]
    by_artifact = Classifier.load(artifact)
    assert by_runtime.runtime == by_artifact.runtime == name
    assert by_artifact.version == records[name]["sha256"][:12]
    quantize = name.partition("-")[2] or "none"
    for c in (by_runtime, by_artifact):
        predictions = c.predict([r.path for r in rows], top_k=3)
        probs = np.array([[dict(p.top_k)[label] for label in clf.labels] for p in predictions])
        assert parity(keras_probs, probs, quantize, "test")["passed"]


def test_tflite_runtime_is_thread_safe_across_batch_sizes(exported):
    run, _ = exported
    _, _, images, _ = _test_split(run)
    clf = Classifier.load(run, runtime="tflite")
    want = {n: clf.predict_proba(images[:n]) for n in (1, 2, len(images))}
    errors: list[str] = []

    def worker(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(30):
            n = int(rng.choice(list(want)))
            got = clf.predict_proba(images[:n])
            if got.shape != want[n].shape or np.abs(got - want[n]).max() > 1e-5:
                errors.append(f"thread {seed}: batch {n} differs")

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
