"""The ``Classifier`` facade: flip test-time augmentation (``--tta``) on a real trained run."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from imagefixtures import COLOURS, make_image, run_cli
from imagerec.classifier import Classifier
from imagerec.errors import ImagerecError


def _batch(n: int = 6) -> np.ndarray:
    rng = np.random.default_rng(7)
    images = [make_image(colour, rng) for colour in list(COLOURS.values()) * (n // len(COLOURS))]
    # an asymmetric stripe: the mirror image really is a different input
    for image in images:
        image[:, :6] = 255
    # two half-and-half images: their mirrors swap the colours' sides, so even a very confident model
    # answers them differently (solid colours alone left the two views within 5e-5 of each other once)
    colours = list(COLOURS.values())
    for left, right in ((0, 1), (1, 2)):
        image = make_image(colours[left], rng)
        image[:, 16:] = make_image(colours[right], rng)[:, 16:]
        image[:, :6] = 255
        images.append(image)
    return np.stack(images)


def test_tta_averages_the_image_and_its_mirror(trained_run):
    plain = Classifier.load(trained_run, runtime="keras")
    tta = Classifier.load(trained_run, runtime="keras", tta=True)
    batch = _batch()
    # the runtime's own probabilities are averaged; the run's temperature applies to the average
    direct = plain.raw_proba(batch)
    mirrored = plain.raw_proba(batch[:, :, ::-1].copy())
    assert np.abs(direct - mirrored).max() > 1e-4  # the two views differ, so the average is a real test
    np.testing.assert_allclose(tta.raw_proba(batch), 0.5 * (direct + mirrored), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tta.predict_proba(batch), plain.calibrated(0.5 * (direct + mirrored)), rtol=1e-4, atol=1e-6)
    assert [p.label for p in tta.predict(list(batch))] == [
        plain.labels[i] for i in (direct + mirrored).argmax(1)
    ]
    assert "tta=hflip" in repr(tta)


def test_tta_is_refused_for_a_run_trained_without_flips(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    config = json.loads((run / "config.json").read_text())
    config["config"]["augment"]["preset"] = "light"  # translation and zoom, no flips (digits, text)
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(ImagerecError, match="trained without flips"):
        Classifier.load(run, tta=True)
    Classifier.load(run)  # without --tta the run is fine


def test_training_reports_tta_accuracy_and_evaluate_tta_matches_it(trained_run, tmp_path, capsys):
    """The run trained with flips (auto preset): metrics.json carries the TTA test accuracy, and
    ``imagerec evaluate --tta`` on the same split agrees with it."""
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["accuracy_tta"] <= 1.0
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("evaluation"))
    code, stdout, err = run_cli(capsys, "evaluate", str(run), "--tta", "--json")
    assert code == 0, err
    out = json.loads(stdout)
    assert out["tta"] == "hflip"
    assert out["accuracy"] == pytest.approx(metrics["test"]["accuracy_tta"], abs=1e-9)


def test_predict_cli_tta_with_ray_is_a_clear_error(trained_run, tmp_path, capsys):
    code, _, err = run_cli(
        capsys,
        "predict",
        str(trained_run),
        str(tmp_path),
        "--tta",
        "--ray",
        "--out",
        str(tmp_path / "r.jsonl"),
    )
    assert code == 2 and "--tta is not available with --ray" in err


def test_answers_is_the_one_labelling_rule(trained_run):
    """``Classifier.answers``: top-k clipped to the classes, the run's temperature for raw probabilities, and one
    threshold rule (None = the run's calibrated threshold, 0 = off, else the value given)."""
    clf = Classifier.load(trained_run, runtime="keras")
    a, b, c = clf.labels
    probs = np.array([[0.6, 0.3, 0.1], [0.1, 0.2, 0.7]], np.float32)
    clf.threshold = 0.65  # as calibration.json would store it
    assert [p.label for p in clf.answers(probs)] == ["unknown", c]
    assert [p.label for p in clf.answers(probs, threshold=0)] == [a, c]
    assert [p.label for p in clf.answers(probs, threshold=0.8)] == ["unknown", "unknown"]
    first = clf.answers(probs, top_k=99, sources=["x.png", None])[0]
    assert first.top_k == [(a, pytest.approx(0.6)), (b, pytest.approx(0.3)), (c, pytest.approx(0.1))]
    assert (first.source, first.index, first.confidence) == ("x.png", 0, pytest.approx(0.6))
    assert len(clf.answers(probs, top_k=0)[1].top_k) == 1
    clf.temperature = 2.0  # raw probabilities are calibrated first: softer, same ranking
    soft = clf.answers(probs, threshold=0, calibrated=False)[0]
    assert soft.label == a and soft.confidence < 0.6
    assert soft.confidence == pytest.approx(float(clf.calibrated(probs)[0, 0]))
