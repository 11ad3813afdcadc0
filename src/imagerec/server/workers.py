"""``imagerec serve --workers N``: the settings travel to the uvicorn worker processes through the environment,
and each worker builds its own service with :func:`app_from_env` (``uvicorn imagerec.server.workers:app_from_env
--factory``). Each worker loads the model itself; with ``--models DIR`` each picks its version and follows DIR
(server/watch.py), which is how an admin reload answered by one worker reaches the others.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from imagerec.settings import ServeSettings

ENV_RUN = "IMAGEREC_SERVE_RUN"
ENV_RUNTIME = "IMAGEREC_SERVE_RUNTIME"
ENV_SETTINGS = "IMAGEREC_SERVE_SETTINGS"
ENV_MODELS = "IMAGEREC_SERVE_MODELS"  # --models DIR ("" without)


def settings_env(run: str, runtime: str, settings: ServeSettings, models: str = "") -> dict[str, str]:
    """The environment that :func:`app_from_env` builds the service from (the API key in IMAGEREC_API_KEY)."""
    data = asdict(settings)
    data.pop("api_key")
    env = {ENV_RUN: str(run), ENV_RUNTIME: runtime, ENV_SETTINGS: json.dumps(data), ENV_MODELS: models}
    if settings.api_key:
        env["IMAGEREC_API_KEY"] = settings.api_key
    return env


def settings_to_env(run: str, runtime: str, settings: ServeSettings, models: str = "") -> None:
    """Hand the run (or ``--models DIR``) and settings to the worker processes through this process's
    environment."""
    os.environ.update(settings_env(run, runtime, settings, models))


def app_from_env():
    """Factory for ``uvicorn imagerec.server.workers:app_from_env --factory`` (each worker loads the model)."""
    from imagerec.classifier import Classifier
    from imagerec.server.app import create_app
    from imagerec.server.versions import ModelDir

    data = json.loads(os.environ.get(ENV_SETTINGS, "{}"))
    data["cors_origins"] = tuple(data.get("cors_origins", ()))
    settings = ServeSettings(**data, api_key=os.environ.get("IMAGEREC_API_KEY") or None)
    runtime = os.environ.get(ENV_RUNTIME, "keras")
    if os.environ.get(ENV_MODELS):
        models = ModelDir(Path(os.environ[ENV_MODELS]), runtime)
        version, clf, _ = models.pick()
        return create_app(clf, settings, models, version)
    return create_app(Classifier.load(os.environ[ENV_RUN], runtime=runtime), settings)
