"""A run's exports answer for it only while they are exports of its current model.keras."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from imagefixtures import COLOURS, make_image
from imagerec import Classifier
from imagerec.export.formats import ExportError
from imagerec.run import RunDir


def test_a_retrained_run_stops_answering_with_its_old_exports(trained_run, tmp_path):
    from imagerec.export.exporter import export_records

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    export_records(Classifier.load(run, runtime="keras"), "tflite", None, parity_images=8)
    assert Classifier.load(run).runtime == "tflite"  # auto: the float export answers like Keras
    # what --resume / a longer training does: a new model.keras (here: the same net with other weights)
    layout = RunDir(run)
    model = layout.load_model()
    model.set_weights([w * 0.5 for w in model.get_weights()])
    layout.save_model(model)
    clf = Classifier.load(run)
    assert clf.runtime == "keras"
    image = make_image(COLOURS["red"], np.random.default_rng(0))[None]
    assert np.allclose(
        clf.predict_proba(image), model(image.astype(np.float32), training=False).numpy(), atol=1e-3
    )
    with pytest.raises(
        ExportError, match="exported from an older model.keras .* re-export with 'imagerec export"
    ):
        Classifier.load(run, runtime="tflite")
