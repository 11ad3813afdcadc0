"""``--models DIR`` followed without an operator (server/watch.py): a new version appearing is swapped in, an
older one is not, a half-written one is refused and retried once complete; the admin reload's wanted-version file
reaches every worker; ``/metrics`` names the served version; ``--workers N`` with ``--models``."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import httpx
import pytest

from server.conftest import LiveServer, free_port, serve_cli

KEY = "watch-test-key"


def wait_for(condition, what: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not after {timeout:.0f} s: {what}")
        time.sleep(0.02)
    return value


def add_version(root: Path, name: str, run: Path, damage: bool = False) -> Path:
    """Copy ``run`` in as version ``name`` in one rename (``damage``: model.keras cut in half, as a copy that
    is still running leaves it)."""
    staging = root.parent / f"staging-{name}"
    shutil.copytree(run, staging)
    if damage:
        model = staging / "model.keras"
        model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    staging.rename(root / name)
    return root / name


@pytest.fixture
def models(trained_run: Path, tmp_path: Path) -> Path:
    root = tmp_path / "models"
    root.mkdir()
    add_version(root, "v2", trained_run)
    return root


def start(root: Path, watch_s: float = 0.05) -> LiveServer:
    from imagerec.server.app import create_app
    from imagerec.server.versions import ModelDir
    from imagerec.settings import ServeSettings

    model_dir = ModelDir(root)
    version, clf, _ = model_dir.pick()
    settings = ServeSettings(api_key=KEY, decode_workers=0, watch_s=watch_s)
    server = LiveServer(create_app(clf, settings, model_dir, version))
    server.service = server.server.config.app.service
    return server


def polls_after(service, n: int = 3) -> None:
    """Wait until the watcher has looked at DIR ``n`` more times."""
    start_at = service.watcher.polls
    wait_for(lambda: service.watcher.polls >= start_at + n, f"{n} polls")


def info(server: LiveServer) -> dict:
    return httpx.get(f"{server.url}/v1/model", headers={"X-API-Key": KEY}, timeout=30).json()


def test_a_new_version_is_swapped_in_an_older_one_is_not(models: Path, trained_run: Path, colour_pngs):
    with start(models) as server:
        service = server.service
        add_version(models, "v1", trained_run)  # older than the one served: never swapped in by the watcher
        polls_after(service)
        assert service.model_version == "v2"
        add_version(models, "v10", trained_run)  # newer (natural sort): swapped in
        wait_for(lambda: service.model_version == "v10", "v10 served")
        assert info(server)["version_dir"] == str(models / "v10")
        answer = httpx.post(
            f"{server.url}/v1/predict", content=colour_pngs["red"], headers={"X-API-Key": KEY}
        )
        assert answer.json()["model"]["model_version"] == "v10"
        assert answer.json()["predictions"][0]["label"] == "red"
        metrics = httpx.get(f"{server.url}/metrics", headers={"X-API-Key": KEY}, timeout=30).text
        assert re.search(r'^imagerec_model_reloads_total\{outcome="ok"\} 1\.0$', metrics, re.M), metrics
        served = re.findall(r"^imagerec_model_info\{(.*)\} 1\.0$", metrics, re.M)
        assert len(served) == 1 and 'version="v10"' in served[0] and 'runtime="keras"' in served[0], served


def test_a_half_written_version_is_refused_then_retried_once_complete(models: Path, trained_run: Path):
    with start(models) as server:
        service = server.service
        half = add_version(models, "v3", trained_run, damage=True)
        wait_for(lambda: service.reload_error, "the refusal of v3")
        assert service.model_version == "v2"
        error = info(server)["last_reload_error"]
        assert "v3" in error and "model.keras" in error, error  # a cut zip archive: refused before any load
        polls_after(service)  # unchanged files: not tried again
        metrics = httpx.get(f"{server.url}/metrics", headers={"X-API-Key": KEY}, timeout=30).text
        assert re.search(r'^imagerec_model_reloads_total\{outcome="refused"\} 1\.0$', metrics, re.M), metrics
        shutil.copyfile(trained_run / "model.keras", half / "model.keras")  # the copy completes
        wait_for(lambda: service.model_version == "v3", "v3 served once complete")
        assert info(server)["last_reload_error"] is None


def test_an_admin_reload_reaches_every_worker_and_survives_a_restart(models: Path, trained_run: Path):
    """Two services on one DIR stand for two ``--workers``: a POST reaches one, the other follows the file."""
    from imagerec.server.watch import WANTED_FILE

    add_version(models, "v1", trained_run)
    with start(models) as first, start(models) as second:
        assert (first.service.model_version, second.service.model_version) == ("v2", "v2")
        answer = httpx.post(
            f"{first.url}/v1/admin/reload", json={"version": "v1"}, headers={"X-API-Key": KEY}, timeout=60
        ).json()
        assert answer["version"] == "v1" and answer["published"] == str(models / WANTED_FILE)
        assert isinstance(answer["pid"], int)
        wait_for(lambda: second.service.model_version == "v1", "the second worker follows the rollback")
        polls_after(second.service)  # and stays there: v2, newer, was there when the rollback was asked for
        assert second.service.model_version == "v1"
    with start(models) as restarted:  # a restart keeps the rollback
        wait_for(lambda: restarted.service.model_version == "v1", "the restarted server follows the file")
        add_version(models, "v3", trained_run)  # a release after the rollback wins
        wait_for(lambda: restarted.service.model_version == "v3", "v3 served")


def test_watch_off(models: Path, trained_run: Path):
    with start(models, watch_s=0) as server:
        assert server.service.watcher is None
        add_version(models, "v3", trained_run)
        assert info(server)["model_version"] == "v2"


def test_serve_models_with_workers(monkeypatch, models: Path):
    """``--workers 2 --models DIR``: each worker builds a versions service from the environment the CLI sets (one
    such worker is started here in-process); ``--watch-s 0`` would leave workers behind a reload: refused."""
    import uvicorn

    from imagerec.cli import main
    from imagerec.server import workers

    for name in (workers.ENV_RUN, workers.ENV_RUNTIME, workers.ENV_SETTINGS, workers.ENV_MODELS):
        monkeypatch.delenv(name, raising=False)  # monkeypatch restores them after the test
    monkeypatch.setenv("IMAGEREC_API_KEY", KEY)
    serve_cli(monkeypatch, ["--models", str(models), "--workers", "2", "--watch-s", "0"], code=2)
    calls: list[dict] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: calls.append({"app": app, **options}))
    with pytest.raises(SystemExit) as exited:
        main(
            [
                "serve",
                "--models",
                str(models),
                "--workers",
                "2",
                "--decode-workers",
                "0",
                "--port",
                str(free_port()),
            ]
        )
    assert exited.value.code in (0, None)
    assert calls[0]["app"] == "imagerec.server.workers:app_from_env" and calls[0]["workers"] == 2
    app = workers.app_from_env()
    assert app.service.settings.watch_s > 0 and app.service.settings.api_key == KEY
    with LiveServer(app) as worker:
        assert info(worker)["model_version"] == "v2"
