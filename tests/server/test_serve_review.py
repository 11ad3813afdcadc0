"""The Review tab's API against a real server: ``serve RUN --review QUEUE --review-out DATASET`` behind a key."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from imagefixtures import COLOURS, make_image
from imagerec.settings import ServeSettings

from .conftest import LiveServer, png_bytes

KEY = "review-key"


def record_pictures(classifier, root: Path, count: int = 12) -> Path:
    """Answer ``count`` colour pictures and record them all (``sample=1``) the way ``serve --record`` does."""
    from imagerec.monitoring.records import Observation, Recorder
    from imagerec.prediction import split_embedding
    from imagerec.settings import RecordSettings

    rng = np.random.default_rng(3)
    images = [make_image(list(COLOURS.values())[i % 3], rng) for i in range(count)]
    scores = classifier.predict_scores(np.stack([classifier.preprocess(a) for a in images]), embedding=True)
    preds = classifier.answers(scores, 3, None)
    emb = split_embedding(scores, len(classifier.labels))
    recorder = Recorder(root, RecordSettings(sample=1.0)).start()
    for i, pred in enumerate(preds):
        recorder.add(Observation(pred, png_bytes(images[i]), emb[i] if emb is not None else None))
    recorder.stop()
    return root


@pytest.fixture(scope="module")
def review_server(classifier, tmp_path_factory):
    from imagerec.monitoring.review import build_queue
    from imagerec.server.app import create_app

    root = tmp_path_factory.mktemp("review")
    record_pictures(classifier, root / "rec")
    build_queue(root / "rec", root / "queue", classes=list(classifier.labels))
    settings = ServeSettings(api_key=KEY, review=str(root / "queue"), review_out=str(root / "dataset"))
    with LiveServer(create_app(classifier, settings)) as live:
        live.dataset = root / "dataset"
        yield live


@pytest.fixture
def review(review_server):
    with httpx.Client(base_url=review_server.url, timeout=30, headers={"X-API-Key": KEY}) as c:
        yield c


def test_review_routes_need_the_key(review_server):
    with httpx.Client(base_url=review_server.url, timeout=30) as anonymous:
        for method, path in (
            ("GET", "/v1/review/queue"),
            ("GET", "/v1/review/image/x"),
            ("POST", "/v1/review/label"),
        ):
            response = anonymous.request(method, path)
            assert response.status_code == 401, path
            assert response.json()["error"]["code"] == "unauthorized"


def test_queue_lists_pictures_with_the_models_guess_and_serves_them(review, classifier):
    body = review.get("/v1/review/queue").json()
    assert body["classes"] == list(classifier.labels) and body["size"] == len(body["items"]) > 0
    first = body["items"][0]
    assert first["guess"] in classifier.labels and 0 < first["confidence"] <= 1 and first["decision"] is None
    image = review.get(f"/v1/review/image/{first['id']}")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.content.startswith(b"\x89PNG")
    assert review.get("/v1/review/image/nope").status_code == 404


def test_labels_land_in_the_dataset_last_write_wins_and_bad_labels_list_the_classes(review, review_server):
    items = review.get("/v1/review/queue").json()["items"]
    a, b = items[0]["id"], items[1]["id"]
    assert review.post("/v1/review/label", json={"id": a, "label": "red"}).status_code == 200
    assert (review_server.dataset / "red" / f"{a}.png").exists()
    assert review.post("/v1/review/label", json={"id": a, "label": "blue"}).json() == {
        "id": a,
        "label": "blue",
    }
    assert not (review_server.dataset / "red" / f"{a}.png").exists()
    assert (review_server.dataset / "blue" / f"{a}.png").exists()
    assert review.post("/v1/review/label", json={"id": b, "label": "none"}).status_code == 200
    assert (review_server.dataset / ".none" / f"{b}.png").exists()
    refused = review.post("/v1/review/label", json={"id": a, "label": "purple"})
    assert refused.status_code == 400 and refused.json()["classes"] == ["blue", "green", "red"]
    assert "blue, green, red" in refused.json()["error"]["message"]
    assert review.post("/v1/review/label", json={"id": "nope", "label": "red"}).status_code == 404
    assert review.post("/v1/review/label", content=b"not json").status_code == 400
    decisions = {it["id"]: it["decision"] for it in review.get("/v1/review/queue").json()["items"]}
    assert decisions[a] == "blue" and decisions[b] == "none"
    assert review.post("/v1/review/label", json={"id": b, "label": "undo"}).status_code == 200
    assert not (review_server.dataset / ".none" / f"{b}.png").exists()
    assert review.get("/readyz").status_code == 200  # the server stays up


def test_no_review_routes_without_a_queue(client):
    assert client.get("/v1/review/queue").status_code == 404
