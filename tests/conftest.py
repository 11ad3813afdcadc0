"""Shared fixtures: tiny *learnable* image folders built at test time, and one tiny trained run per session."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
warnings.filterwarnings("ignore", category=UserWarning)

from imagefixtures import COLOURS, make_image, write_colour_dataset  # noqa: E402,F401 - re-exported


@pytest.fixture
def colour_data(tmp_path: Path) -> Path:
    """A folder of 3 colour classes x 12 PNG images, 32x32."""
    return write_colour_dataset(tmp_path / "colours")


@pytest.fixture(scope="session")
def imagerec_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("imagerec_home")
    os.environ["IMAGEREC_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, imagerec_home) -> Path:
    """One tiny imagerec-cnn run on colour data (3 classes), trained once per test session. Treat as read-only."""
    import imagerec

    root = tmp_path_factory.mktemp("trained")
    data = write_colour_dataset(root / "data", per_class=30, seed=1)
    # float32 on purpose: the tests compare runtimes against this model, and 9 test images per class keep the
    # accuracy check meaningful (a single miss costs 11 points, not 17)
    run = imagerec.train(
        data, out=root / "run", epochs=12, batch_size=16, seed=0, mixed_precision="off", log=lambda *_: None
    )
    assert run.metrics["test"]["accuracy"] >= 0.8, run.metrics
    return run.path


@pytest.fixture(scope="session")
def multilabel_run(tmp_path_factory, imagerec_home) -> Path:
    """One tiny multi-label run (``path,labels`` CSV: each colour square present or not), trained once per test
    session. Treat as read-only."""
    import imagerec
    from imagefixtures import write_multilabel_dataset

    root = tmp_path_factory.mktemp("multilabel")
    data = write_multilabel_dataset(root / "data", n=120, seed=2)
    run = imagerec.train(
        data,
        out=root / "run",
        epochs=12,
        batch_size=8,
        val=0.2,
        seed=0,
        mixed_precision="off",
        log=lambda *_: None,
    )
    assert run.metrics["test"]["macro_f1"] >= 0.8, run.metrics
    return run.path


@pytest.fixture(scope="session")
def multilabel_classifier(multilabel_run: Path):
    """The session's multi-label run, loaded once (Keras runtime). Treat as read-only."""
    from imagerec import Classifier

    return Classifier.load(multilabel_run)
