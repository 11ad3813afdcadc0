"""A calibrated run answers ``unknown`` below its threshold, the same way through every surface: the Python API
(``Classifier.predict``), ``imagerec predict``, and the HTTP server (``create_app`` and ``imagerec serve``); and
``--threshold 0`` (``threshold=0``) turns it off everywhere.

The session's tiny run is copied, calibrated for real (``imagerec calibrate``: temperature scaling on its val split),
and given a stored threshold. Its val split is perfectly separable, so calibration alone suggests 0 (never
``unknown``); a harder dataset gets a threshold in (0, 1), which is what this test stores, in the file and field
``calibrate`` writes.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from imagefixtures import COLOURS, make_image, run_cli
from imagerec.cli import main
from server.conftest import LiveServer, serve_cli


def cli(capsys, *args: str) -> tuple[int, str, str]:
    return run_cli(capsys, *args)


def _doubtful_image(clf, first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, float, set[str]]:
    """The blend of two clear images where the answer flips (bisection): the model is torn between two classes
    there, whatever the temperature, so its confidence is near 0.5. Returns the image, its confidence, and the two
    classes (which of them wins so close to the tie may differ with the batch, by float rounding)."""
    start = clf.predict(first, threshold=0)[0].label
    lo, hi = 0.0, 1.0
    for _ in range(24):
        mid = (lo + hi) / 2
        blend = np.round((1 - mid) * first + mid * second).astype(np.uint8)
        lo, hi = (mid, hi) if clf.predict(blend, threshold=0)[0].label == start else (lo, mid)
    candidates = [np.round((1 - a) * first + a * second).astype(np.uint8) for a in (lo, hi)]
    preds = [clf.predict(c, threshold=0)[0] for c in candidates]
    best = int(np.argmin([p.confidence for p in preds]))
    return candidates[best], preds[best].confidence, {p.label for p in preds}


@pytest.fixture(scope="module")
def calibrated(trained_run, tmp_path_factory) -> dict:
    """A calibrated copy of the run, a doubtful image and three clear ones (PNG files), and the stored threshold."""
    from imagerec.classifier import Classifier

    root = tmp_path_factory.mktemp("calibrated")
    run = root / "run"
    shutil.copytree(trained_run, run)
    try:
        main(["calibrate", str(run)])
    except SystemExit as exc:
        assert not exc.code
    record = json.loads((run / "calibration.json").read_text())
    clf = Classifier.load(run, runtime="keras")
    rng = np.random.default_rng(11)
    clear = {name: make_image(colour, rng) for name, colour in COLOURS.items()}
    doubtful, doubt, torn = _doubtful_image(clf, clear["red"], clear["blue"])
    sure = min(p.confidence for p in clf.predict(list(clear.values()), threshold=0))
    assert doubt < sure - 0.1, (doubt, sure)  # room for a threshold between them
    record["threshold"] = round((doubt + sure) / 2, 6)
    # these tests hold the confidence rule; the out-of-distribution rule (tests/openworld) could also reject a clear
    # image of this tiny run (its OOD threshold keeps 95% of 9 val images), so it is left out here
    record.pop("ood_threshold", None)
    (run / "calibration.json").write_text(json.dumps(record))
    files = {}
    for name, array in {**clear, "doubtful": doubtful}.items():
        files[name] = root / f"{name}.png"
        Image.fromarray(array).save(files[name])
    return {
        "run": run,
        "files": files,
        "torn": torn,
        "threshold": record["threshold"],
        "temperature": record["temperature"],
    }


def test_python_api_answers_unknown_below_the_stored_threshold(calibrated):
    import imagerec

    clf = imagerec.Classifier.load(calibrated["run"])
    assert clf.threshold == calibrated["threshold"]
    assert clf.temperature == pytest.approx(calibrated["temperature"])
    files = calibrated["files"]
    preds = clf.predict([str(files[n]) for n in ("red", "green", "blue", "doubtful")], top_k=3)
    assert [p.label for p in preds] == ["red", "green", "blue", "unknown"]
    doubtful = preds[-1]
    assert doubtful.confidence < clf.threshold
    # the scores still name both classes it hesitated between
    assert {label for label, _ in doubtful.top_k[:2]} == calibrated["torn"]
    (off,) = clf.predict(str(files["doubtful"]), threshold=0)
    assert off.label in calibrated["torn"] and off.confidence == pytest.approx(doubtful.confidence, abs=1e-3)


def test_cli_predict_answers_unknown_and_threshold_0_turns_it_off(calibrated, capsys):
    run, files = calibrated["run"], calibrated["files"]
    paths = [str(files["doubtful"]), str(files["green"])]
    code, out, err = cli(capsys, "predict", str(run), *paths, "--format", "json")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["label"] for r in rows] == ["unknown", "green"]
    code, out, err = cli(capsys, "predict", str(run), *paths, "--format", "json", "--threshold", "0")
    assert code == 0, err
    labels = [json.loads(line)["label"] for line in out.splitlines()]
    assert labels[0] in calibrated["torn"] and labels[1] == "green"
    code, out, _ = cli(capsys, "predict", str(run), paths[0], "--format", "json", "--threshold", "0.001")
    # an explicit threshold replaces the stored confidence threshold (the blend of two colours may still be
    # unlike the training images: then it is unknown for that reason only)
    row = json.loads(out)
    assert code == 0 and (row["label"] != "unknown" or row["reason"] == "out_of_distribution")
    code, _, err = cli(capsys, "predict", str(run), paths[0], "--threshold", "1.5")
    assert code == 2 and "--threshold must be in [0, 1]" in err and len(err.strip().splitlines()) == 1


def _post(url: str, data: bytes) -> dict:
    import httpx

    response = httpx.post(f"{url}/v1/predict", files={"file": ("x.png", data, "image/png")}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["predictions"][0]


def test_server_answers_unknown_and_threshold_0_turns_it_off(calibrated):
    import httpx

    from imagerec.classifier import Classifier
    from imagerec.server.app import create_app
    from imagerec.settings import ServeSettings

    files = calibrated["files"]
    doubtful, red = files["doubtful"].read_bytes(), files["red"].read_bytes()
    clf = Classifier.load(calibrated["run"])
    with LiveServer(create_app(clf, ServeSettings(decode_workers=0))) as live:
        assert _post(live.url, doubtful)["label"] == "unknown"
        assert _post(live.url, red)["label"] == "red"
        assert httpx.get(f"{live.url}/v1/model", timeout=30).json()["threshold"] == calibrated["threshold"]
        metrics = httpx.get(f"{live.url}/metrics", timeout=30).text
        assert 'imagerec_predictions_total{label="unknown"} 1.0' in metrics
    with LiveServer(create_app(clf, ServeSettings(decode_workers=0, threshold=0))) as live:
        assert _post(live.url, doubtful)["label"] in calibrated["torn"]
        assert httpx.get(f"{live.url}/v1/model", timeout=30).json()["threshold"] is None


def test_serve_cli_threshold_flag(calibrated, monkeypatch):
    doubtful = calibrated["files"]["doubtful"].read_bytes()
    run = str(calibrated["run"])
    seen: list[str] = []
    check = lambda live: seen.append(_post(live.url, doubtful)["label"])  # noqa: E731
    serve_cli(monkeypatch, [run, "--decode-workers", "0"], check)
    serve_cli(monkeypatch, [run, "--decode-workers", "0", "--threshold", "0"], check)
    assert seen[0] == "unknown" and seen[1] in calibrated["torn"]


def test_calibrating_on_a_tiny_val_split_warns(trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    try:
        main(["calibrate", str(run)])
    except SystemExit as exc:
        assert not exc.code
    captured = capsys.readouterr()
    n = json.loads((run / "calibration.json").read_text())["num_images"]
    assert n < 100
    warning = [line for line in captured.err.splitlines() if line.startswith("imagerec: warning:")]
    assert warning == [
        f"imagerec: warning: only {n} val images: the temperature and threshold are rough; more validation images "
        "make them reliable (train with --val 0.2, or add images to val/)"
    ]
    assert "wrote" in captured.out
