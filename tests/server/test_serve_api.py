"""The v1 API, health, metrics and the page, against a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import re

import numpy as np
import pytest


def test_health_ready_and_security_headers(client):
    for path in ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.headers["x-content-type-options"] == "nosniff"
    assert client.get("/readyz").json()["status"] == "ready"


@pytest.mark.parametrize("colour", ["red", "green", "blue"])
def test_predict_multipart_one_file(client, colour_pngs, colour):
    response = client.post("/v1/predict", files={"file": (f"{colour}.png", colour_pngs[colour], "image/png")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"predictions", "model"}
    assert set(body["model"]) == {"name", "version"}
    (pred,) = body["predictions"]
    assert pred["filename"] == f"{colour}.png"
    assert pred["label"] == colour
    assert 0.34 < pred["confidence"] <= 1.0
    assert [t["label"] for t in pred["top_k"]][0] == colour
    assert len(pred["top_k"]) == 3  # 3 classes: min(5, 3)
    assert abs(sum(t["score"] for t in pred["top_k"]) - 1.0) < 1e-3


def test_predict_several_files_and_top_k(client, colour_pngs):
    files = [("file", (f"{c}.png", data, "image/png")) for c, data in colour_pngs.items()]
    response = client.post("/v1/predict?top_k=2", files=files)
    assert response.status_code == 200, response.text
    preds = response.json()["predictions"]
    assert [p["label"] for p in preds] == list(colour_pngs)
    assert [p["filename"] for p in preds] == [f"{c}.png" for c in colour_pngs]
    assert all(len(p["top_k"]) == 2 for p in preds)


def test_predict_raw_body_sniffed_not_trusted(client, colour_pngs):
    # a PNG labelled as JPEG: the content decides
    response = client.post(
        "/v1/predict", content=colour_pngs["green"], headers={"Content-Type": "image/jpeg"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["label"] == "green"
    assert response.json()["predictions"][0]["filename"] is None


def test_bad_top_k(client, colour_pngs):
    for value in ("0", "99", "abc"):
        response = client.post(f"/v1/predict?top_k={value}", content=colour_pngs["red"])
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "bad_request"
        assert "top_k" in response.json()["error"]["message"]


def test_camera_session_smoothing(client, colour_pngs, classifier):
    url = "/v1/predict?session=cam-1&smooth=0.9&top_k=3"
    names, state = classifier.labels, None
    # red, red, then one blue frame: the raw label flips; the smoothed one is exactly the EMA (alpha 0.9) of the
    # raw probabilities, checked per frame so the test does not hinge on how confident the tiny model is
    for colour in ("red", "red", "blue"):
        item = client.post(url, content=colour_pngs[colour]).json()["predictions"][0]
        assert item["label"] == colour
        probs = {p["label"]: p["score"] for p in item["top_k"]}
        raw = np.array([probs[n] for n in names])
        state = raw if state is None else 0.9 * state + 0.1 * raw
        assert item["smoothed"]["label"] == names[int(state.argmax())]
        assert item["smoothed"]["confidence"] == pytest.approx(state.max(), abs=1e-4)
    # another session is independent
    other = client.post("/v1/predict?session=cam-2&smooth=0.9", content=colour_pngs["blue"]).json()
    assert other["predictions"][0]["smoothed"]["label"] == "blue"
    assert client.post("/v1/predict?session=bad/id", content=colour_pngs["red"]).status_code == 400
    assert client.post("/v1/predict?session=x&smooth=1.5", content=colour_pngs["red"]).status_code == 400


def test_camera_smoothed_label_obeys_the_threshold(classifier, colour_pngs):
    """A calibrated run answers ``unknown`` below its threshold on upload AND in the camera session's smoothed
    answer: both come from the same labelling function (the camera once printed a class name there)."""
    import copy

    import httpx
    from tests.server.conftest import LiveServer

    from imagerec.server.app import create_app
    from imagerec.settings import ServeSettings

    calibrated = copy.copy(classifier)
    calibrated.temperature = 3.0  # as if calibration.json stored it: softer, so a threshold fits below 1
    confidence = calibrated.predict(colour_pngs["red"], threshold=0)[0].confidence
    assert calibrated.predict(colour_pngs["red"], threshold=0)[0].label == "red" and confidence < 0.999
    calibrated.threshold = round(confidence + (1 - confidence) / 2, 6)
    with LiveServer(create_app(calibrated, ServeSettings(decode_workers=0))) as live:
        url = f"{live.url}/v1/predict?session=cam-t&smooth=0"
        item = httpx.post(url, content=colour_pngs["red"], timeout=30).json()["predictions"][0]
        assert item["label"] == "unknown"
        assert item["smoothed"]["label"] == "unknown"
        assert item["smoothed"]["confidence"] == pytest.approx(item["confidence"], abs=1e-6)
    with LiveServer(create_app(calibrated, ServeSettings(decode_workers=0, threshold=0))) as live:
        url = f"{live.url}/v1/predict?session=cam-t&smooth=0"
        item = httpx.post(url, content=colour_pngs["red"], timeout=30).json()["predictions"][0]
        assert item["label"] == "red" and item["smoothed"]["label"] == "red"


def test_answers_carry_the_ood_score_and_an_ood_unknown(classifier, colour_pngs):
    """Uploads and the camera's smoothed answer carry the out-of-distribution score; above the run's OOD threshold
    both say ``unknown`` with the reason (the same labelling function as predict)."""
    import copy

    import httpx
    from tests.server.conftest import LiveServer

    from imagerec.server.app import create_app
    from imagerec.settings import ServeSettings

    expected = float(classifier.predict_scores(classifier.preprocess(colour_pngs["red"])[None])[0, -1])
    strict = copy.copy(classifier)
    strict.ood_threshold = expected / 2  # as if calibrate had picked a threshold below this image's score
    with LiveServer(create_app(strict, ServeSettings(decode_workers=0))) as live:
        url = f"{live.url}/v1/predict?session=cam-o&smooth=0"
        item = httpx.post(url, content=colour_pngs["red"], timeout=30).json()["predictions"][0]
    assert item["ood_score"] == pytest.approx(expected, rel=1e-4)
    assert item["label"] == "unknown" and item["reason"] == "out_of_distribution"
    assert item["smoothed"] == {"label": "unknown", "confidence": pytest.approx(item["confidence"], abs=1e-6),
                                "reason": "out_of_distribution"}  # fmt: skip


def test_model_info(client, classifier):
    info = client.get("/v1/model").json()
    assert info["labels"] == classifier.labels
    assert info["input_shape"] == [32, 32, 3]
    assert info["version"] == classifier.version
    assert 0.8 <= info["metrics"]["test"]["accuracy"] <= 1.0


def test_metrics_counts_requests_and_predictions(client, colour_pngs):
    client.post("/v1/predict", content=colour_pngs["red"])
    client.post("/v1/predict", content=b"")
    text = client.get("/metrics").text
    ok = re.search(r'imagerec_http_requests_total\{route="/v1/predict",status="200"\} (\d+)', text)
    bad = re.search(r'imagerec_http_requests_total\{route="/v1/predict",status="400"\} (\d+)', text)
    assert ok and int(float(ok.group(1))) >= 1
    assert bad and int(float(bad.group(1))) >= 1
    red = re.search(r'imagerec_predictions_total\{label="red"\} (\d+)', text)
    assert red and float(red.group(1)) >= 1
    assert "imagerec_http_request_duration_seconds_bucket" in text
    assert "imagerec_batch_size_bucket" in text


def test_page_and_assets_are_local(client):
    page = client.get("/")
    assert page.status_code == 200
    assert "default-src 'self'" in page.headers["content-security-policy"]
    html = page.text
    assert "<script" in html and "http://" not in html and "https://" not in html  # no CDN
    for asset in ("/static/app.js", "/static/app.css"):
        response = client.get(asset)
        assert response.status_code == 200 and response.headers["x-content-type-options"] == "nosniff"
        assert "https://" not in response.text


def test_unknown_route_and_method_are_json(client):
    response = client.get("/nope")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    response = client.get("/v1/predict")
    assert response.status_code == 405 and response.json()["error"]["code"] == "method_not_allowed"
    # no route loads or replaces a model
    for path in ("/v1/model?model=../../x", "/v2/repository/models/x/load", "/v1/models/load"):
        assert client.post(path).status_code in (404, 405)


def test_default_bind_is_loopback():
    from imagerec.settings import ServeSettings

    assert ServeSettings().host == "127.0.0.1"


def test_openapi_documents_the_routes(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert "post" in paths["/v1/predict"] and "/v2/models/{name}/infer" in paths and "/v1/model" in paths


def test_the_start_up_heap_is_frozen_while_serving_and_released_after(classifier):
    """A full garbage collection over TensorFlow's heap paused the event loop for 0.25-0.3 s under load (the p99
    of the serving benchmark): the service freezes what is alive after warm-up and unfreezes it when it stops."""
    import gc

    import httpx
    from tests.server.conftest import LiveServer

    from imagerec.server.app import create_app
    from imagerec.settings import ServeSettings

    gc.unfreeze()
    with LiveServer(create_app(classifier, ServeSettings(decode_workers=0))) as live:
        assert httpx.get(f"{live.url}/readyz", timeout=30).status_code == 200
        assert gc.get_freeze_count() > 10_000  # TensorFlow + Keras + the model
    assert gc.get_freeze_count() == 0


def test_the_inner_fastapi_route_answers_like_the_fast_path(classifier, colour_pngs):
    """``POST /v1/predict`` of a built app skips FastAPI (routes_v1.FastPredict); the inner FastAPI app
    (``app.fastapi``, for mounting elsewhere) keeps the route. Both give the same answers and the same errors."""
    from starlette.testclient import TestClient

    from imagerec.server.app import create_app
    from imagerec.settings import ServeSettings

    settings = ServeSettings(decode_workers=0, max_files=2)
    built, other = create_app(classifier, settings), create_app(classifier, settings)
    cases = [
        dict(content=colour_pngs["red"], headers={"x-filename": "red.png"}),
        dict(
            files=[
                ("file", ("g.png", colour_pngs["green"], "image/png")),
                ("file", ("b.png", colour_pngs["blue"])),
            ]
        ),
        dict(files=[("file", ("g.png", colour_pngs["green"]))] * 3),
        dict(content=b"not an image"),
        dict(content=b""),
        dict(content=b"a=1", headers={"content-type": "application/x-www-form-urlencoded"}),
    ]
    with TestClient(built) as fast_client, TestClient(other.fastapi) as inner:
        for query in ("", "?top_k=2", "?top_k=99", "?top_k=x", "?session=cam-f&smooth=0.5", "?session=a/b"):
            for case in cases:
                fast = fast_client.post("/v1/predict" + query, **case)
                slow = inner.post("/v1/predict" + query, **case)
                assert fast.status_code == slow.status_code, (query, case, fast.text, slow.text)
                assert fast.json() == slow.json(), (query, fast.text, slow.text)
                assert fast.headers["content-type"] == slow.headers["content-type"] == "application/json"


def test_plain_pngs_of_the_models_size_skip_the_decode_process(classifier, colour_pngs):
    """With decode processes on, a plain PNG of the model's input size is decoded in-thread (no round trip);
    a JPEG or a PNG of another size still goes to a decode process. The answers are the same either way."""
    import io

    import httpx
    from PIL import Image
    from tests.server.conftest import LiveServer

    from imagerec.server.app import create_app
    from imagerec.settings import ServeSettings

    picture = Image.open(io.BytesIO(colour_pngs["red"]))
    assert picture.size == (classifier.image_size,) * 2 and picture.mode == "RGB"
    bigger = io.BytesIO()
    picture.resize((48, 48), Image.Resampling.NEAREST).save(bigger, "PNG")
    jpeg = io.BytesIO()
    picture.save(jpeg, "JPEG", quality=95)
    app = create_app(classifier, ServeSettings(decode_workers=1))
    with LiveServer(app) as live:
        pool = app.service.decode_procs
        answers = {}
        for name, data, round_trips in (("plain", colour_pngs["red"], 0), ("jpeg", jpeg.getvalue(), 1),
                                         ("bigger", bigger.getvalue(), 2)):  # fmt: skip
            answer = httpx.post(f"{live.url}/v1/predict", content=data, timeout=30)
            assert answer.status_code == 200, answer.text
            answers[name] = answer.json()["predictions"][0]
            assert pool.batches == round_trips, name
    assert {a["label"] for a in answers.values()} == {"red"}
    in_process = classifier.predict(colour_pngs["red"], threshold=0)[0]
    assert answers["plain"]["top_k"][0]["score"] == pytest.approx(in_process.top_k[0][1], abs=1e-5)
