"""One registry of runtimes: the callables that map a uint8 image batch ``(N, S, S, C)`` to probabilities ``(N, K)``.

``keras`` runs the run's own model; each export format (``savedmodel``, ``tflite``, ``onnx``, and quantized
variants such as ``tflite-int8``) runs a verified export; ``auto`` is the runtime recorded by ``imagerec export`` /
``imagerec benchmark`` in ``RUN/exports/runtime.json``: the fastest that answers like Keras (Keras when none was
recorded); ``auto-quantized`` may pick a quantized export (see :mod:`imagerec.runtime.exported`).

Example:
    >>> fn = get_runtime("keras")(model, {"image_size": 28, "channels": 1})
    >>> probs = predict_in_batches(fn, images, batch_size=256)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from imagerec.errors import ImagerecError

#: factory(model_or_export_dir, info) -> callable(batch) -> probs; info has image_size, channels, run_dir
Factory = Callable[[Any, dict[str, Any]], Callable[[np.ndarray], np.ndarray]]


def _keras_factory(model: Any, info: dict[str, Any]) -> Callable:
    from imagerec.runtime.keras import KerasRuntime

    return KerasRuntime(model, info["image_size"], info["channels"])


def _export_factory(name: str) -> Factory:
    def factory(model: Any, info: dict[str, Any]) -> Callable:
        from imagerec.runtime.exported import find_export, open_runtime

        export_dir = Path(model) if model is not None else find_export(info["run_dir"], name)
        return open_runtime(export_dir, info)

    factory.__name__ = f"{name}_runtime"
    return factory


def _registry() -> dict[str, Factory]:
    from imagerec.export.formats import FORMATS

    return {"keras": _keras_factory, **{name: _export_factory(name) for name in FORMATS}}


def runtime_names() -> list[str]:
    return list(_registry())


def get_runtime(name: str) -> Factory:
    """The factory of runtime ``name`` (``keras``, ``savedmodel``, ``tflite``, ``onnx``)."""
    registry = _registry()
    if name not in registry:
        raise ImagerecError(f"unknown runtime {name!r}; choose one of {', '.join(registry)}")
    return registry[name]


def predict_in_batches(
    fn: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch_size: int
) -> np.ndarray:
    """THE batched probability loop: ``fn`` over ``images`` in slices of ``batch_size``, concatenated ``(N, K)``.

    ``fn`` is a runtime callable (or a Classifier's ``predict_proba``); an empty input gives ``(0, K)`` only when
    ``fn`` accepts an empty batch, so callers with possibly empty inputs pass ``num_classes``.
    """
    if batch_size < 1:
        raise ImagerecError(f"batch_size must be >= 1, got {batch_size}")
    parts = [
        np.asarray(fn(images[i : i + batch_size]), np.float32) for i in range(0, len(images), batch_size)
    ]
    if not parts:
        return np.asarray(fn(images[:0]), np.float32)
    return np.concatenate(parts)


__all__ = ["Factory", "get_runtime", "predict_in_batches", "runtime_names"]
