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


def outputs_of(fn: Callable, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """``(probabilities, embedding or None)`` of one batch: ``fn.outputs`` where the runtime has an embedding
    (Keras, and exports written with one), else ``(fn(batch), None)``."""
    outputs = getattr(fn, "outputs", None)
    out = outputs(batch) if outputs is not None else fn(batch)
    if isinstance(out, tuple):  # a runtime's outputs, or a Classifier's raw_outputs
        return out
    return np.asarray(out, np.float32), None


def predict_in_batches(
    fn: Callable[[np.ndarray], np.ndarray],
    images: np.ndarray,
    batch_size: int,
    embedding: bool = False,
    rows: np.ndarray | None = None,
):
    """THE batched probability loop: ``fn`` over ``images`` in slices of ``batch_size``, concatenated ``(N, K)``.

    ``fn`` is a runtime callable (or a Classifier's ``predict_proba``); an empty input gives ``(0, K)`` only when
    ``fn`` accepts an empty batch, so callers with possibly empty inputs pass ``num_classes``. With
    ``embedding=True`` it returns ``(probabilities, embeddings or None)`` (see :func:`outputs_of`). ``rows``: only
    these indices of ``images``, gathered one batch at a time (no copy of the whole selection, which for a
    memory-mapped split would read it all into memory).
    """
    if batch_size < 1:
        raise ImagerecError(f"batch_size must be >= 1, got {batch_size}")
    step = (lambda b: outputs_of(fn, b)) if embedding else (lambda b: (fn(b), None))
    n = len(images) if rows is None else len(rows)
    take = (
        (lambda i: images[i : i + batch_size])
        if rows is None
        else (lambda i: images[rows[i : i + batch_size]])
    )
    parts = [step(take(i)) for i in range(0, n, batch_size)] or [step(images[:0])]
    probs = np.concatenate([np.asarray(p, np.float32) for p, _ in parts])
    if not embedding:
        return probs
    embs = [e for _, e in parts]
    return probs, (None if any(e is None for e in embs) else np.concatenate(embs).astype(np.float32))


__all__ = ["Factory", "get_runtime", "outputs_of", "predict_in_batches", "runtime_names"]
