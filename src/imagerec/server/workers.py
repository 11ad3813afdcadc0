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


def settings_to_env(run: str, runtime: str, settings: ServeSettings, models: str = "") -> None:
    """Hand the run (or ``--models DIR``) and settings to the worker processes (the API key stays in
    IMAGEREC_API_KEY)."""
    data = asdict(settings)
    data.pop("api_key")
    os.environ[ENV_RUN] = str(run)
    os.environ[ENV_RUNTIME] = runtime
    os.environ[ENV_SETTINGS] = json.dumps(data)
    os.environ[ENV_MODELS] = models
    if settings.api_key:
        os.environ["IMAGEREC_API_KEY"] = settings.api_key


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
