"""Open Inference Protocol (KServe v2) REST against the real server."""

from __future__ import annotations

import base64
import json
import struct

import numpy as np


def _name(client) -> str:
    return client.get("/v1/model").json()["name"]


def test_metadata_and_readiness(client, classifier):
    name = _name(client)
    assert client.get("/v2").json()["extensions"] == ["binary_tensor_data"]
    meta = client.get(f"/v2/models/{name}").json()
    assert meta["name"] == name and meta["versions"] == [classifier.version]
    assert {i["datatype"] for i in meta["inputs"]} == {"BYTES", "FP32"}
    assert meta["outputs"][0] == {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}
    assert meta["outputs"][2] == {"name": "ood_score", "datatype": "FP32", "shape": [-1]}
    assert client.get(f"/v2/models/{name}/ready").json() == {"name": name, "ready": True}
    assert client.get(f"/v2/models/{name}/versions/{classifier.version}").status_code == 200
    assert client.get("/v2/health/ready").json() == {"ready": True}


def test_infer_bytes_base64(client, classifier, colour_pngs):
    name = _name(client)
    data = [base64.b64encode(colour_pngs[c]).decode() for c in ("red", "blue")]
    request = {"id": "r1", "inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "data": data}]}
    response = client.post(f"/v2/models/{name}/infer", json=request)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == "r1" and body["model_name"] == name
    probs, labels, ood = body["outputs"]
    assert probs["name"] == "probabilities" and probs["shape"] == [2, 3] and probs["datatype"] == "FP32"
    assert np.allclose(np.array(probs["data"]).reshape(2, 3).sum(1), 1.0, atol=1e-4)
    assert labels == {"name": "labels", "datatype": "BYTES", "shape": [2], "data": ["red", "blue"]}
    # the run has an embedding reference: every answer carries its out-of-distribution score
    assert ood["name"] == "ood_score" and ood["shape"] == [2] and ood["datatype"] == "FP32"
    pixels = np.stack([classifier.preprocess(colour_pngs[c]) for c in ("red", "blue")])
    np.testing.assert_allclose(ood["data"], classifier.predict_scores(pixels)[:, -1], rtol=1e-4, atol=1e-4)


def test_infer_fp32_pixels_matches_bytes(client, classifier, colour_pngs):
    name = _name(client)
    pixels = np.stack([classifier.preprocess(colour_pngs[c]) for c in ("green", "red")]).astype(np.float32)
    request = {
        "inputs": [
            {
                "name": "pixels",
                "shape": list(pixels.shape),
                "datatype": "FP32",
                "data": pixels.ravel().tolist(),
            }
        ],
        "outputs": [{"name": "probabilities"}],
    }
    body = client.post(f"/v2/models/{name}/infer", json=request).json()
    assert [o["name"] for o in body["outputs"]] == ["probabilities"]
    probs = np.array(body["outputs"][0]["data"]).reshape(2, 3)
    expected = classifier.predict_proba(pixels)
    assert np.allclose(probs, expected, atol=1e-5)
    assert [classifier.labels[i] for i in probs.argmax(1)] == ["green", "red"]


def test_infer_binary_tensor_extension(client, colour_pngs):
    """The layout tritonclient.http sends by default (binary_data=True)."""
    name = _name(client)
    raw = b"".join(struct.pack("<I", len(colour_pngs[c])) + colour_pngs[c] for c in ("blue", "green"))
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [2, 1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    ).encode()
    response = client.post(
        f"/v2/models/{name}/infer",
        content=header + raw,
        headers={
            "Inference-Header-Content-Length": str(len(header)),
            "Content-Type": "application/octet-stream",
        },
    )
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][1]["data"] == ["blue", "green"]


def test_infer_bad_image_in_bytes_is_4xx(client):
    name = _name(client)
    request = {
        "inputs": [
            {
                "name": "image",
                "shape": [1],
                "datatype": "BYTES",
                "data": [base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"broken" * 10).decode()],
            }
        ]
    }
    response = client.post(f"/v2/models/{name}/infer", json=request)
    assert response.status_code == 400 and response.json()["error"]["code"] in ("corrupt", "truncated")
    request["inputs"][0]["data"] = ["plain text, not an image"]
    response = client.post(f"/v2/models/{name}/infer", json=request)
    assert response.status_code == 415 and response.json()["error"]["code"] == "unsupported_format"


def test_tritonclient_http_works_unchanged(server, colour_pngs):
    httpclient = __import__("pytest").importorskip("tritonclient.http", reason="needs tritonclient[http]")
    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    meta_name = __import__("httpx").get(f"{server.url}/v1/model").json()["name"]
    assert client.is_model_ready(meta_name)
    assert client.get_model_metadata(meta_name)["name"] == meta_name
    for binary in (True, False):
        images = np.array([colour_pngs["green"], colour_pngs["red"]], dtype=object)
        if not binary:  # JSON strings: base64 text, as a JSON-only client would send
            images = np.array([base64.b64encode(x) for x in images], dtype=object)
        inp = httpclient.InferInput("image", [2], "BYTES")
        inp.set_data_from_numpy(images, binary_data=binary)
        outputs = [
            httpclient.InferRequestedOutput("probabilities"),
            httpclient.InferRequestedOutput("labels"),
        ]
        result = client.infer(meta_name, [inp], outputs=outputs)
        assert result.as_numpy("probabilities").shape == (2, 3)
        assert [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("labels")] == [
            "green",
            "red",
        ]
    client.close()
