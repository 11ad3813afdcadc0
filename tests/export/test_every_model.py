"""Every row of the model registry exports to every format and quantization, and the export loads and answers.

Each row is trained for one epoch (untrained backbones: ``weights="none"``) at its smallest image size, once per
row, then exported to each (format, quantization) of the table. The backbones are ``slow`` (CI runs them).
EfficientNetV2 holds its input normalisation as plain tensors: its ONNX export once asked callers to feed them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from imagerec.export.exporter import export_name, plan
from imagerec.models.registry import list_models

# backbones: 15-50 s per export on 2 cores (and a minute or two to train the first time) -> slow, CI runs them
CASES = [
    pytest.param(spec.name, fmt, q, id=f"{spec.name}-{export_name(fmt, q)}",
                 marks=[pytest.mark.slow] if spec.kind == "backbone" else [])
    for spec in list_models()
    for fmt, q in plan("all", None)
]  # fmt: skip


@pytest.fixture(scope="module")
def row_run(tmp_path_factory, imagerec_home):
    """``row_run(name) -> run directory``: the row trained for one epoch on colour data, once per module."""
    import imagerec
    from imagefixtures import write_colour_dataset
    from imagerec.models.registry import get_model_spec

    root = tmp_path_factory.mktemp("every_model")
    data = write_colour_dataset(root / "data", per_class=6, seed=1)
    runs: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in runs:
            size = max(get_model_spec(name).min_size, 16)
            runs[name] = imagerec.train(
                data, out=root / name, model=name, image_size=size, epochs=1, batch_size=8, seed=0,
                mixed_precision="off", log=lambda *_: None,
            ).path  # fmt: skip
        return runs[name]

    return get


@pytest.mark.parametrize("name, fmt, quantize", CASES)
def test_every_model_exports_to_every_format(row_run, tmp_path, name, fmt, quantize):
    from imagerec import Classifier
    from imagerec.data.split import read_manifest, rows_for
    from imagerec.export.exporter import export_records
    from imagerec.export.formats import ExportFailures

    run = row_run(name)
    keras = Classifier.load(run, runtime="keras")
    out = tmp_path / export_name(fmt, quantize)
    try:
        _, (record,) = export_records(keras, fmt, quantize, out, parity_images=16, representative_images=16)
    except ExportFailures as exc:
        # A net trained one epoch on 18 pictures answers nearly flat, and its split has 3 test images: ONNX
        # Runtime's and NNCF's int8 flipped one of them for imagerec-cnn-large (max |dp| 0.07-0.10). The parity
        # gate must refuse such an export in one line and publish nothing; the trained run of test_export.py holds
        # both int8 exports to answering like Keras.
        if (fmt, quantize) not in (("onnx", "int8"), ("openvino", "int8")):
            raise
        assert "failed its parity check" in str(exc) and not out.exists(), str(exc)
        return
    assert record["parity"]["passed"], record["parity"]
    paths = [r.path for r in rows_for(read_manifest(run / "manifest.csv"), "test")][:4]
    exported = Classifier.load(out)
    assert exported.runtime == export_name(fmt, quantize) and exported.labels == keras.labels
    want = keras.predict_proba(np.stack([keras.preprocess(p) for p in paths]))
    got = exported.predict_proba(np.stack([exported.preprocess(p) for p in paths]))
    assert got.shape == want.shape
    if quantize == "none":
        np.testing.assert_allclose(got, want, atol=1e-4)
