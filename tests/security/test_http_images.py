"""RELIABILITY B8-B14 end to end: the hostile image corpus through a real server, and train/serve parity over HTTP."""

from __future__ import annotations

import numpy as np
import pytest

from server.conftest import LiveServer

from . import hostile_images as hostile
from .test_decode_parity import AWKWARD


@pytest.fixture(scope="module")
def classifier(trained_run):
    from imagerec.classifier import Classifier

    return Classifier.load(trained_run)


@pytest.fixture(scope="module")
def live(classifier):
    from imagerec.server.app import create_app
    from imagerec.settings import ServeSettings

    with LiveServer(create_app(classifier, ServeSettings(max_upload_mb=4))) as server:
        yield server


def _corpus() -> dict[str, tuple[bytes, int, str]]:
    cases = {
        "bomb.png": (hostile.png_bomb(), 413, "image_too_large"),
        "sof.jpg": (hostile.jpeg_claiming(), 413, "image_too_large"),
        "screen.gif": (hostile.gif_claiming(), 413, "image_too_large"),
        "no_eoi.jpg": (hostile.jpeg_without_eoi(), 400, "truncated"),
        "bad_crc.png": (hostile.png_bad_crc(), 400, "corrupt"),
    }
    for name, data in hostile.non_image_corpus().items():
        cases[name] = (data, 415, "unsupported_format")
    return cases


def test_b8_b11_hostile_uploads_get_typed_4xx_never_5xx(live):
    import httpx

    with httpx.Client(base_url=live.url, timeout=30) as client:
        for name, (data, status, code) in _corpus().items():
            ctype = "image/png" if name.endswith(".png") else "image/jpeg"  # the lie does not matter
            response = client.post("/v1/predict", files={"file": (name, data, ctype)})
            assert (response.status_code, response.json()["error"]["code"]) == (status, code), (
                name,
                response.text,
            )
            assert response.headers["x-content-type-options"] == "nosniff"
        ok = client.post(
            "/v1/predict", files={"file": ("exif.jpg", hostile.jpeg_corrupt_exif(), "image/jpeg")}
        )
        assert ok.status_code == 200  # corrupt EXIF: a clean decode
        frames = client.post(
            "/v1/predict", files={"file": ("anim.gif", hostile.animated_gif(3000), "image/gif")}
        )
        assert frames.status_code == 200


def test_b12_b13_http_predictions_equal_local_predictions_for_awkward_images(live, classifier):
    import httpx

    names = sorted(AWKWARD)
    local = classifier.predict_proba(np.stack([classifier.preprocess(AWKWARD[n][0]) for n in names]))
    with httpx.Client(base_url=live.url, timeout=30) as client:
        for i, name in enumerate(names):
            response = client.post(
                "/v1/predict",
                files={"file": (name, AWKWARD[name][0], "application/octet-stream")},
                params={"top_k": 3},
            )
            assert response.status_code == 200, (name, response.text)
            top = {label: score for label, score in ((t["label"], t["score"]) for t in _top(response.json()))}
            for j, label in enumerate(classifier.labels):
                assert top[label] == pytest.approx(float(local[i, j]), abs=1e-5), (name, label)


def _top(body: dict) -> list[dict]:
    pred = body["predictions"][0]
    items = pred.get("top_k") or pred.get("top")
    return [item if isinstance(item, dict) else {"label": item[0], "score": item[1]} for item in items]
