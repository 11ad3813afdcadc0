"""``--models DIR`` and ``POST /v1/admin/reload``: swap versions on a live server without downtime."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest

from server.conftest import LiveServer, serve_cli

KEY = "reload-test-key"


@pytest.fixture(scope="module")
def models_dir(trained_run: Path, tmp_path_factory) -> Path:
    """v1 = the trained run; v2 = the same model with temperature 2.0 (observable in /v1/model); v10 = v2 with a
    tampered model.keras (its sha256 check fails), the newest by natural sort (v10 after v2)."""
    root = tmp_path_factory.mktemp("models")
    shutil.copytree(trained_run, root / "v1")
    shutil.copytree(trained_run, root / "v2")
    (root / "v2" / "calibration.json").write_text(json.dumps({"temperature": 2.0}))
    shutil.copytree(root / "v2", root / "v10")
    model = root / "v10" / "model.keras"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    (root / "notes").mkdir()  # no config.json: not a version
    return root


@pytest.fixture(scope="module")
def live(models_dir: Path):
    from imagerec.server.app import create_app
    from imagerec.server.versions import ModelDir
    from imagerec.settings import ServeSettings

    model_dir = ModelDir(models_dir)
    version, clf, skipped = model_dir.pick()
    assert version == "v2" and [s["version"] for s in skipped] == ["v10"]
    # the watcher is off here (its tests: test_serve_watch.py): reloads happen only when a test asks
    settings = ServeSettings(api_key=KEY, max_wait_ms=5, decode_workers=0, watch_s=0)
    app = create_app(clf, settings, model_dir, version)
    with LiveServer(app) as server:
        yield server


@pytest.fixture
def client(live):
    import httpx

    with httpx.Client(base_url=live.url, timeout=60, headers={"X-API-Key": KEY}) as c:
        yield c


def served(client) -> dict:
    response = client.get("/v1/model")
    assert response.status_code == 200
    return response.json()


def test_versions_sort_naturally_and_a_dot_name_is_a_copy_in_progress(models_dir: Path, tmp_path: Path):
    import shutil

    from imagerec.server.versions import ModelDir

    assert ModelDir(models_dir).names() == ["v1", "v2", "v10"]
    root = tmp_path / "models"
    shutil.copytree(models_dir / "v1", root / "v1")
    shutil.copytree(models_dir / "v1", root / ".v9")  # complete, but not released yet
    assert ModelDir(root).names() == ["v1"]


def test_reload_switches_version_and_rolls_back(client, colour_pngs, models_dir: Path):
    info = served(client)
    assert (info["model_version"], info["temperature"]) == ("v2", 2.0)
    assert info["version_dir"] == str(models_dir / "v2")

    response = client.post("/v1/admin/reload", json={"version": "v1"})  # rollback by name
    assert response.status_code == 200, response.text
    assert (response.json()["version"], response.json()["previous"]) == ("v1", "v2")
    info = served(client)
    assert (info["model_version"], info["temperature"], info["last_reload_error"]) == ("v1", 1.0, None)
    answer = client.post("/v1/predict", content=colour_pngs["red"])
    assert answer.status_code == 200 and answer.json()["predictions"][0]["label"] == "red"
    assert answer.json()["model"]["model_version"] == "v1"

    response = client.post("/v1/admin/reload")  # no body: the newest version that passes (v10 is refused)
    assert response.status_code == 200, response.text
    assert response.json()["version"] == "v2"
    assert [s["version"] for s in response.json()["skipped"]] == ["v10"]
    info = served(client)
    assert info["model_version"] == "v2" and "v10" in info["last_reload_error"]


def test_corrupt_version_is_refused_and_the_old_one_keeps_serving(client, colour_pngs):
    before = served(client)["model_version"]
    response = client.post("/v1/admin/reload", json={"version": "v10"})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "version_refused" and "v10" in error["message"]
    info = served(client)
    assert info["model_version"] == before
    assert "v10" in info["last_reload_error"] and "sha256" in info["last_reload_error"].lower()
    assert (
        client.post("/v1/predict", content=colour_pngs["green"]).json()["predictions"][0]["label"] == "green"
    )


def test_reload_refusals(live, client):
    import httpx

    assert httpx.post(f"{live.url}/v1/admin/reload", timeout=30).status_code == 401
    bad_key = httpx.post(f"{live.url}/v1/admin/reload", headers={"X-API-Key": "wrong"}, timeout=30)
    assert bad_key.status_code == 401
    unknown = client.post("/v1/admin/reload", json={"version": "v9"})
    assert unknown.status_code == 404 and "v1" in unknown.json()["error"]["message"]
    assert client.post("/v1/admin/reload", content=b"[1]").status_code == 400


def test_requests_during_reloads_all_answer(live, client, colour_pngs):
    """A thread sends predictions in a loop while versions are swapped: every answer is a 200."""
    import httpx

    statuses: list[int] = []
    first = threading.Event()
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=live.url, timeout=60, headers={"X-API-Key": KEY}) as c:
            while not stop.is_set():
                statuses.append(c.post("/v1/predict", content=colour_pngs["blue"]).status_code)
                first.set()

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    try:
        assert first.wait(60)
        for version in ("v1", "v2", "v1", "v2"):
            assert client.post("/v1/admin/reload", json={"version": version}).status_code == 200
        done = len(statuses)
        while len(statuses) < done + 3 and thread.is_alive():  # a few more answers from the last version
            first.clear()
            first.wait(60)
    finally:
        stop.set()
        thread.join(60)
    assert statuses and set(statuses) == {200}, statuses


def test_admin_routes_need_an_api_key(classifier, models_dir: Path):
    import httpx

    from imagerec.server.app import create_app
    from imagerec.server.versions import ModelDir
    from imagerec.settings import ServeSettings

    app = create_app(classifier, ServeSettings(decode_workers=0, watch_s=0), ModelDir(models_dir), "v1")
    with LiveServer(app) as server:
        response = httpx.post(f"{server.url}/v1/admin/reload", json={"version": "v2"}, timeout=30)
        assert response.status_code == 403 and "--api-key" in response.json()["error"]["message"]


def test_serve_models_cli(monkeypatch, models_dir: Path):
    import httpx

    def check(live) -> None:
        info = httpx.get(f"{live.url}/v1/model", headers={"X-API-Key": KEY}, timeout=30).json()
        assert info["model_version"] == "v2"

    serve_cli(monkeypatch, ["--models", str(models_dir), "--api-key", KEY, "--decode-workers", "0"], check)


def test_serve_needs_run_or_models(monkeypatch, trained_run: Path, models_dir: Path):
    serve_cli(monkeypatch, [], code=2)
    serve_cli(monkeypatch, [str(trained_run), "--models", str(models_dir)], code=2)
    serve_cli(monkeypatch, ["--models", str(models_dir), "--workers", "2", "--watch-s", "0"], code=2)
