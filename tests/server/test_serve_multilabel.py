"""A multi-label run served for real (uvicorn on 127.0.0.1): v1 answers and camera sessions carry label sets, the
KServe v2 ``labels`` output holds them joined by ';', and the metadata says so."""

from __future__ import annotations

import base64

import numpy as np
import pytest


@pytest.fixture
def ml_client(multilabel_server):
    import httpx

    with httpx.Client(base_url=multilabel_server.url, timeout=30) as c:
        yield c


def test_v1_predict_answers_label_sets_and_scores(ml_client, multilabel_classifier, multilabel_pngs):
    files = [("file", (f"{'+'.join(key)}.png", data, "image/png")) for key, data in multilabel_pngs.items()]
    response = ml_client.post("/v1/predict?top_k=2", files=files)
    assert response.status_code == 200, response.text
    preds = response.json()["predictions"]
    expected = multilabel_classifier.predict(list(multilabel_pngs.values()), top_k=2)
    right = 0
    for item, want, present in zip(preds, expected, multilabel_pngs, strict=True):
        assert set(item["scores"]) == {"blue", "green", "red"} and len(item["top_k"]) == 2
        assert item["labels"] == want.labels  # the facade's answer, most probable first
        assert item["scores"] == pytest.approx(want.scores, abs=1e-5)
        assert item["label"] == (item["labels"][0] if item["labels"] else "unknown")
        right += sorted(item["labels"]) == sorted(present)
    assert right >= len(preds) - 1  # the tiny run sees the colour squares


def test_v1_model_names_the_task_and_thresholds(ml_client, multilabel_classifier):
    info = ml_client.get("/v1/model").json()
    assert info["task"] == "multilabel" and info["temperature"] == 1.0
    assert info["thresholds"] == pytest.approx(
        dict(zip(multilabel_classifier.labels, multilabel_classifier.thresholds.tolist(), strict=True))
    )


def test_camera_session_smooths_the_label_set(ml_client, multilabel_classifier, multilabel_pngs):
    state = None
    for key in [("red",), ("red",), ("blue", "green")]:
        item = ml_client.post("/v1/predict?session=ml-cam&smooth=0.8", content=multilabel_pngs[key])
        item = item.json()["predictions"][0]
        raw = np.array([item["scores"][n] for n in multilabel_classifier.labels])
        state = raw if state is None else 0.8 * state + 0.2 * raw
        # the smoothed answer: the run's per-class thresholds applied to the EMA of the scores
        names, thresholds = multilabel_classifier.labels, multilabel_classifier.thresholds
        want = [names[j] for j in np.argsort(-state) if state[j] >= thresholds[j]]
        assert item["smoothed"]["labels"] == want
        assert item["smoothed"]["label"] == (want[0] if want else "unknown")


def test_v2_labels_output_holds_joined_label_sets(ml_client, multilabel_classifier, multilabel_pngs):
    name = ml_client.get("/v1/model").json()["name"]
    meta = ml_client.get(f"/v2/models/{name}").json()
    assert meta["outputs"][0] == {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}
    assert meta["outputs"][1] == {"name": "labels", "datatype": "BYTES", "shape": [-1]}
    assert (
        meta["parameters"]["task"] == "multilabel" and "joined by ';'" in meta["parameters"]["labels_output"]
    )
    assert set(meta["parameters"]["thresholds"]) == {"blue", "green", "red"}
    images = list(multilabel_pngs.values())
    data = [base64.b64encode(image).decode() for image in images]
    request = {"inputs": [{"name": "image", "shape": [len(data)], "datatype": "BYTES", "data": data}]}
    body = ml_client.post(f"/v2/models/{name}/infer", json=request).json()
    probs, labels = body["outputs"][:2]
    assert probs["name"] == "probabilities" and probs["shape"] == [len(data), 3]
    expected = multilabel_classifier.predict(images)
    assert labels["name"] == "labels" and labels["data"] == [";".join(p.labels) for p in expected]
    want = [[p.scores[n] for n in multilabel_classifier.labels] for p in expected]
    np.testing.assert_allclose(np.array(probs["data"]).reshape(len(data), 3), want, atol=1e-5)
