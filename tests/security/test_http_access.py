"""RELIABILITY A6, C18-C19 against a real server: no model-loading route, API key, default bind, CORS."""

from __future__ import annotations

import pytest

from imagerec.errors import ImagerecError
from server.conftest import LiveServer

from .http_helpers import colour_png

KEY = "k3y-0123456789abcdef"


@pytest.fixture(scope="module")
def classifier(trained_run):
    from imagerec.classifier import Classifier

    return Classifier.load(trained_run)


@pytest.fixture(scope="module")
def keyed(classifier):
    from imagerec.server.app import create_app
    from imagerec.settings import ServeSettings

    settings = ServeSettings(api_key=KEY, cors_origins=("https://good.example",))
    with LiveServer(create_app(classifier, settings)) as server:
        yield server


# A6 ------------------------------------------------------------------------------------------------------
def test_a6_no_route_loads_or_replaces_a_model(keyed, classifier):
    import httpx

    headers = {"X-API-Key": KEY}
    attempts = [
        ("POST", "/v1/models", None),
        ("PUT", "/v1/model", None),
        ("POST", "/v1/model/load", None),
        ("POST", "/v2/repository/models/imagerec/load", None),
        ("POST", "/v2/repository/index", None),
        ("DELETE", "/v2/models/imagerec", None),
        ("POST", "/models?url=http://169.254.169.254/model.keras", None),
        ("GET", "/v1/model?model=../../etc/passwd", "ok"),
        ("POST", "/v1/predict?model=../../x.keras", "ok"),
    ]
    version = classifier.version
    with httpx.Client(base_url=keyed.url, headers=headers, timeout=30) as client:
        for method, path, expect in attempts:
            files = {"file": ("a.png", colour_png(), "image/png")} if "predict" in path else None
            response = client.request(method, path, files=files)
            if expect == "ok":  # the parameter is ignored: the same fixed model answers
                assert response.status_code == 200, (path, response.text)
                assert "etc/passwd" not in response.text and "x.keras" not in response.text
            else:
                assert response.status_code in (404, 405), (method, path, response.status_code)
        # the one admin route swaps among the operator's `--models DIR` versions, by name, with the key; a server
        # started with one run (this one) has nothing to swap to, whatever the body names
        response = client.post("/v1/admin/reload", json={"version": "../../etc/passwd"})
        assert response.status_code == 409 and response.json()["error"]["code"] == "not_reloadable"
        assert client.get("/v1/model").json()["version"] == version
        spec = client.get("/openapi.json").json()
    for path in spec.get("paths", {}):
        if path == "/v1/admin/reload":  # tests/server/test_serve_reload.py: names only, key required, 403 keyless
            continue
        assert not any(word in path for word in ("load", "repository", "upload_model", "register")), path


# C18 -----------------------------------------------------------------------------------------------------
def test_c18_missing_wrong_and_nearly_right_keys_get_401(keyed):
    import httpx

    image = colour_png()
    near = KEY[:-1] + chr(ord(KEY[-1]) ^ 1)
    with httpx.Client(base_url=keyed.url, timeout=30) as client:
        for headers in (
            {},
            {"X-API-Key": "wrong"},
            {"X-API-Key": near},
            {"Authorization": f"Bearer {near}"},
            {"X-API-Key": KEY + "x"},
        ):
            response = client.post(
                "/v1/predict", files={"file": ("a.png", image, "image/png")}, headers=headers
            )
            assert response.status_code == 401, (headers, response.status_code)
            assert response.json()["error"]["code"] == "unauthorized"
            assert KEY not in response.text
        for path in ("/docs", "/openapi.json", "/redoc", "/metrics", "/v1/model", "/v2/models/imagerec"):
            assert client.get(path).status_code == 401, path
        for headers in ({"X-API-Key": KEY}, {"Authorization": f"Bearer {KEY}"}):
            response = client.post(
                "/v1/predict", files={"file": ("a.png", image, "image/png")}, headers=headers
            )
            assert response.status_code == 200, response.text
        assert client.get("/healthz").status_code == 200  # liveness stays public


def test_c18_key_check_uses_compare_digest():
    import inspect

    from imagerec.server import limits

    assert "secrets.compare_digest" in inspect.getsource(limits.LimitsMiddleware._authorised)


def test_c18_default_settings_bind_loopback_only():
    import inspect

    from imagerec.cli.serve import serve
    from imagerec.settings import ServeSettings

    assert ServeSettings().host == "127.0.0.1"
    assert inspect.signature(serve).parameters["host"].default.default == "127.0.0.1"


# C19 -----------------------------------------------------------------------------------------------------
def test_c19_preflight_from_a_foreign_origin_gets_no_allow_origin(keyed):
    import httpx

    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "X-API-Key"}
    with httpx.Client(base_url=keyed.url, timeout=30) as client:
        evil = client.options("/v1/predict", headers={"Origin": "https://evil.example", **preflight})
        assert "access-control-allow-origin" not in evil.headers
        good = client.options("/v1/predict", headers={"Origin": "https://good.example", **preflight})
        assert good.headers.get("access-control-allow-origin") == "https://good.example"
        simple = client.get("/healthz", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in simple.headers
        assert simple.headers["x-content-type-options"] == "nosniff"


def test_c19_wildcard_with_credentials_refuses_to_start(classifier):
    from imagerec.server.app import create_app
    from imagerec.settings import ServeSettings

    with pytest.raises(ImagerecError, match="cannot be combined"):
        create_app(classifier, ServeSettings(cors_origins=("*",), cors_credentials=True))


def test_c19_cors_is_off_by_default(classifier):
    import httpx

    from imagerec.server.app import create_app
    from imagerec.settings import ServeSettings

    with LiveServer(create_app(classifier, ServeSettings())) as server:
        response = httpx.options(
            f"{server.url}/v1/predict",
            headers={"Origin": "https://any.example", "Access-Control-Request-Method": "POST"},
            timeout=30,
        )
    assert "access-control-allow-origin" not in response.headers


# C24 -----------------------------------------------------------------------------------------------------
def _snapshot(*roots) -> dict[str, tuple[int, int]]:
    return {
        str(path): (path.stat().st_size, path.stat().st_mtime_ns)
        for root in roots
        for path in root.rglob("*")
        if path.is_file()
    }


def test_c24_an_upload_is_never_stored_or_served_back(classifier, tmp_path, monkeypatch):
    """Not applicable by design: imagerec has no upload-then-preview/download flow. Uploads live in memory for one
    request (the page previews the user's own file from a local blob: URL). Check that no route serves an upload
    back and that nothing is written to the temporary folder, the run directory or the static folder."""
    import tempfile
    import uuid

    import httpx

    from imagerec.server.app import STATIC, create_app
    from imagerec.settings import ServeSettings

    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    monkeypatch.setenv("TMPDIR", str(private))  # the decode processes are spawned with it
    name = f"c24-{uuid.uuid4().hex}.png"
    image = colour_png(seed=24)
    app = create_app(classifier, ServeSettings())  # default settings: decode processes on
    watched = (private, classifier.run_dir.path, STATIC)
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        before = _snapshot(*watched)
        response = client.post("/v1/predict", files={"file": (name, image, "image/png")})
        assert response.status_code == 200, response.text
        (pred,) = response.json()["predictions"]
        # no id, URL or path to fetch it by (ood_score: the run has an embedding reference)
        assert set(pred) == {"filename", "label", "confidence", "top_k", "ood_score"}
        stem = name[: -len(".png")]
        for path in (f"/{name}", f"/static/{name}", f"/uploads/{name}", f"/v1/uploads/{name}", f"/files/{name}",
                     f"/download/{name}", f"/preview/{name}", f"/v1/predict/{name}", f"/v1/predict/{stem}",
                     "/uploads", "/v1/uploads"):  # fmt: skip
            got = client.get(path)
            assert got.status_code in (404, 405), (path, got.status_code)
            assert image not in got.content and name not in got.text, path
        assert _snapshot(*watched) == before
    routes = {getattr(route, "path", "") for route in app.fastapi.routes}
    words = ("upload", "download", "preview", "file")
    assert not [r for r in routes if any(w in r.lower() for w in words)], routes
