"""A directory of model versions (``imagerec serve --models DIR``) and the swap without downtime.

``DIR`` holds one run directory per version (``DIR/v1``, ``DIR/v2``, any names). Versions are ordered by a natural
sort of their names (``v2`` < ``v10``; ``2026-12-01`` < ``2026-12-07``), never by modification time, which a copy
or a backup restore changes. The newest version that passes :func:`load_checked` (the model file's sha256 verifies,
the model answers a one-image batch with finite scores) is served by default.

:func:`reload` swaps the served model: the new Classifier is loaded (in a thread: the event loop keeps answering),
checked and warmed in a batcher of its own beside the old one; then the service's model, batcher and threshold are
replaced in one step on the event loop (no await in between, so no request sees half of each); requests already
queued finish on the old batcher, which is then stopped and released. A refused version leaves the old model
serving and is reported in the answer, the log and ``/v1/model``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imagerec.errors import ImagerecError
from imagerec.server.limits import HTTPError

log = logging.getLogger("imagerec.server")
#: What a new version must share with the served one: uploads are decoded, and answers labelled, for these.
SAME = ("labels", "task", "image_size", "channels", "resize")


def natural_key(name: str) -> list:
    """Sort key: digit runs compare as numbers (``v2`` before ``v10``)."""
    return [
        (0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name) if part
    ]


@dataclass(frozen=True)
class ModelDir:
    """``--models DIR``: the versions under ``root`` and the runtime they are served with."""

    root: Path
    runtime: str = "keras"

    def names(self) -> list[str]:
        """Version names, oldest first (natural sort); a version is a sub-directory holding ``config.json``, not a
        dot-name (a copy in progress: ``cp -r runs/v3 DIR/.v3 && mv DIR/.v3 DIR/v3`` releases it at once)."""
        if not self.root.is_dir():
            raise ImagerecError(
                f"--models {self.root}: not a directory; expected a folder of run directories (DIR/v1, DIR/v2)"
            )
        names = [
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and not p.name.startswith(".") and (p / "config.json").is_file()
        ]
        return sorted(names, key=natural_key)

    def path(self, name: str) -> Path:
        return self.root / name

    def pick(self):
        """The newest version that passes :func:`load_checked`: ``(name, classifier, skipped)``, where
        ``skipped`` lists ``{"version", "reason"}`` of the newer ones refused.

        Raises:
            ImagerecError: no version under ``root`` passes (each one's reason in the message).
        """
        freeze_imports(self.runtime)
        skipped: list[dict[str, str]] = []
        for name in reversed(self.names()):
            try:
                return name, load_checked(self.path(name), self.runtime), skipped
            except Exception as exc:  # noqa: BLE001 - any failure refuses this version, the next is tried
                skipped.append({"version": name, "reason": describe(exc)})
                log.warning("model version %s refused: %s", name, describe(exc))
        reasons = "; ".join(f"{s['version']}: {s['reason']}" for s in skipped) or "it holds no run directory"
        raise ImagerecError(f"--models {self.root}: no version loads ({reasons})")


def describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, ImagerecError) else f"{type(exc).__name__}: {exc}"


def load_checked(path: Path, runtime: str):
    """Load the run at ``path`` (its model hash is verified on load) and check it answers one blank image."""
    from imagerec.classifier import Classifier

    clf = Classifier.load(path, runtime=runtime)
    scores = np.asarray(
        clf.predict_scores(np.zeros((1, clf.image_size, clf.image_size, clf.channels), np.float32))
    )
    if scores.shape[0] != 1 or not np.all(np.isfinite(scores)):
        raise ImagerecError(
            f"{path}: the self-check answered {scores.shape} scores (finite: no); expected 1 row"
        )
    return clf


def incompatible(new, old) -> str | None:
    """Why ``new`` cannot replace ``old`` without a restart, or None."""
    for name in SAME:
        if getattr(new, name) != getattr(old, name):
            return f"its {name} ({getattr(new, name)}) differs from the served model's ({getattr(old, name)}); restart the server to change it"
    return None


async def reload(service, version: str | None) -> dict:
    """Swap ``service`` to ``version`` (None: the newest version that passes); see the module docstring.

    Raises:
        HTTPError: 409 without ``--models`` or during another reload, 404 for an unknown version, 422 when the
            version (or, without a name, every version) is refused; the old model keeps serving.
    """
    models: ModelDir | None = service.models
    if models is None:
        raise HTTPError(
            409, "not_reloadable", "this server serves one run; start it with --models DIR to reload"
        )
    if service.reload_lock.locked():
        raise HTTPError(409, "reload_in_progress", "another reload is running; retry when it has finished")
    async with service.reload_lock:
        names = await asyncio.to_thread(models.names)
        if version is not None and version not in names:
            raise HTTPError(
                404, "unknown_version", f"no version {version!r} in {models.root}; versions: {names}"
            )
        skipped: list[dict[str, str]] = []
        for name in [version] if version is not None else list(reversed(names)):
            try:
                batcher, clf = await _prepare(service, models, name)
            except Exception as exc:  # noqa: BLE001 - the version is refused, the old model keeps serving
                skipped.append({"version": name, "reason": describe(exc)})
                log.warning("reload: version %s refused, the served model is kept: %s", name, describe(exc))
                continue
            previous = service.model_version
            old = service.install(clf, batcher, name, models.path(name))
            service.reload_error = _summary(skipped)
            log.warning("reload: now serving version %s (was %s)", name, previous)
            service.metrics.reloads.labels(outcome="ok").inc()
            await _retire(old, service)
            # pid: with --workers N this process alone answered; the others follow DIR (server/watch.py)
            return {
                "version": name, "previous": previous, "skipped": skipped, "model": service.model_info(),
                "pid": os.getpid(),
            }  # fmt: skip
        service.reload_error = _summary(skipped)
        service.metrics.reloads.labels(outcome="refused").inc()
        raise HTTPError(
            422,
            "version_refused",
            f"reload refused, still serving {service.model_version}: {service.reload_error}",
        )


def _summary(skipped: list[dict[str, str]]) -> str | None:
    return "; ".join(f"{s['version']}: {s['reason']}" for s in skipped) or None


async def _prepare(service, models: ModelDir, name: str):
    """The new version loaded, checked and warmed in its own started batcher."""
    clf = await asyncio.to_thread(load_checked, models.path(name), models.runtime)
    why = incompatible(clf, service.clf)
    if why:
        raise ImagerecError(why)
    batcher = service.new_batcher(clf)
    await batcher.start()
    try:
        await batcher.warm_up(service.input_shape)
    except BaseException:
        await batcher.stop()
        raise
    return batcher, clf


def freeze_imports(runtime: str) -> None:
    """Freeze the heap of the imports (TensorFlow, Keras: ~400,000 objects) before the first version loads.

    Long-running servers freeze their start-up heap (``gc.freeze``; app.freeze_heap) so that full collections do
    not walk it while the event loop waits (0.25-0.3 s each). A server of versions must also release each old
    model, whose Keras objects hold reference cycles: frozen with the rest, only an unfreeze and a full collection
    over the whole heap would free it, a 0.2-0.3 s pause at every swap (measured: bench/swap.py). Frozen before
    the first model exists, the heap leaves every version's objects (~10,000) to the collector: releasing one
    costs a collection of those alone (about 1 ms).
    """
    import gc
    import importlib

    # what loading a model and serving it imports later (in Classifier.load, create_app, uvicorn), frozen now
    modules = ["fastapi", "prometheus_client", "uvicorn", "PIL.PngImagePlugin", "PIL.JpegImagePlugin"]
    modules += ["onnxruntime"] if runtime == "onnx" else ["tensorflow", "keras"]
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:  # an optional runtime that is missing fails the load itself, with its own message
            pass

    gc.collect()
    gc.freeze()


def versions_stay_collectable(service) -> bool:
    """True on a ``--models`` server whose imports were frozen before its first version loaded
    (:func:`freeze_imports`): then the start-up freeze is skipped, and a swap frees the old model cheaply."""
    import gc

    return service.models is not None and gc.get_freeze_count() > 0


async def _retire(batcher, service) -> None:
    """Let the old batcher answer what it already holds, then stop it and hand its model back to the collector."""
    import gc

    deadline = time.monotonic() + service.settings.timeout_s
    while not batcher.idle and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    await batcher.stop()
    del batcher
    if not getattr(service, "model_frozen", True):  # never frozen: collecting the unfrozen objects frees it
        gc.collect()
        return
    gc.unfreeze()  # the old model was frozen with the start-up heap (app.freeze_heap): collect it, freeze again
    gc.collect()
    gc.freeze()
