"""The facade: ``Classifier.load / predict / evaluate / stream / export`` — the CLI's verbs, in Python.

Example:
    >>> clf = Classifier.load("runs/fmnist")
    >>> [p.label for p in clf.predict(["a.png", "b.jpg"])]
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from imagerec.data.images import load_image
from imagerec.errors import ImageRejected
from imagerec.prediction import Prediction, PredictionError
from imagerec.run import RunDir
from imagerec.runtime import get_runtime
from imagerec.utils import read_json

UNKNOWN = "unknown"


class Classifier:
    """A trained model with its labels, preprocessing contract and calibration."""

    def __init__(self, run_dir: RunDir, model, runtime: str = "keras", runtime_fn=None, tta: bool = False):
        self.run_dir = run_dir
        config = run_dir.read_config()
        self.config = config
        self.labels: list[str] = run_dir.read_labels()
        self.image_size: int = int(config["image_size"])
        self.channels: int = int(config["channels"])
        self.resize: str = config.get("resize", "stretch")
        self.name: str = config.get("model", {}).get("name", "model")
        self.model = model
        self.runtime = runtime
        info = {"image_size": self.image_size, "channels": self.channels, "run_dir": run_dir.path}
        self._run = runtime_fn or get_runtime(runtime)(model, info)
        self.tta = tta
        if tta:
            check_flip_tta(config)
            self._run = with_flip_tta(self._run)
        calib = read_json(run_dir.calibration) if run_dir.calibration.exists() else {}
        self.temperature: float = float(calib.get("temperature", 1.0))
        self.threshold: float | None = calib.get("threshold")
        hash_file = Path(str(run_dir.model) + ".sha256.json")
        self.version: str = read_json(hash_file)["sha256"][:12] if hash_file.exists() else "unversioned"

    # construction -----------------------------------------------------------------------------------------
    @classmethod
    def load(cls, run: str | os.PathLike, runtime: str = "auto", tta: bool = False) -> Classifier:
        """Load a run directory, or an exported artifact (``.tflite``, ``.onnx``, SavedModel folder).

        A run's Keras model is loaded with Keras ``safe_mode`` after a pre-scan and hash check; an exported
        artifact is loaded only when its sha256 matches its ``export.json`` and its ``labels.json`` sidecar exists.

        Args:
            run: the run directory written by ``imagerec train``, or an artifact / export directory written by
                ``imagerec export``.
            runtime: ``auto`` (default: the fastest runtime that passed parity, as recorded in
                ``RUN/exports/runtime.json`` by ``imagerec export`` (a quick measurement) or ``imagerec benchmark``
                (a thorough one); Keras when nothing was recorded),
                ``keras``, or an export of the run: ``tflite``, ``onnx``, ``savedmodel`` or an export directory
                name such as ``tflite-int8`` (looked up in ``RUN/exports/``).
            tta: test-time augmentation: average the probabilities of each image and its mirror image (twice the
                model cost; for runs trained with horizontal flips, see :func:`with_flip_tta`).

        Raises:
            RunError: the run is missing or incomplete.
            ImagerecError: the runtime has no export in the run, or the artifact was refused.

        Example:
            >>> Classifier.load("runs/fmnist", runtime="tflite").predict("shoe.png")
            >>> Classifier.load("runs/fmnist/exports/tflite-int8/model.tflite")
        """
        from imagerec.runtime.exported import is_artifact_path, open_export_runtime, resolve_runtime

        if is_artifact_path(run):
            run_dir, name, runtime_fn, version = open_export_runtime(run, runtime)
            clf = cls(run_dir, None, name, runtime_fn=runtime_fn, tta=tta)
            clf.version = version
            return clf
        run_dir = RunDir(run).require()
        export_dir = resolve_runtime(run_dir.path, runtime)
        if export_dir is None:
            return cls(run_dir, run_dir.load_model(), "keras", tta=tta)
        _, name, runtime_fn, _ = open_export_runtime(export_dir, export_dir.name, run_dir)
        return cls(run_dir, None, name, runtime_fn=runtime_fn, tta=tta)

    # inputs -----------------------------------------------------------------------------------------------
    def preprocess(self, x: Any) -> np.ndarray:
        """The exact ``uint8 (S, S, C)`` tensor the model sees for ``x`` (path, bytes, PIL image or array)."""
        return load_image(x, (self.image_size, self.image_size), self.channels, self.resize)

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        """Calibrated probabilities ``(N, num_classes)`` for a preprocessed batch ``(N, S, S, C)``."""
        if len(batch) == 0:
            return np.zeros((0, len(self.labels)), np.float32)
        return softmax_temperature(self._run(batch), self.temperature)

    def _results(
        self, probs: np.ndarray, top_k: int, sources: list[str | None], threshold: float | None
    ) -> list[Prediction]:
        k = max(1, min(top_k, len(self.labels)))
        order = np.argsort(-probs, axis=1)[:, :k]
        out = []
        for i, row in enumerate(order):
            conf = float(probs[i, row[0]])
            label = self.labels[row[0]]
            if threshold is not None and conf < threshold:
                label = UNKNOWN
            top = [(self.labels[j], float(probs[i, j])) for j in row]
            out.append(Prediction(label, conf, top, sources[i], i))
        return out

    def predict(
        self,
        x: Any,
        top_k: int = 5,
        batch_size: int = 64,
        threshold: float | None = None,
        errors: str = "raise",
    ) -> list[Prediction | PredictionError]:
        """Classify one input or a list of inputs (paths, bytes, PIL images, numpy arrays).

        Args:
            x: one input or a list of them.
            top_k: how many ``(label, score)`` pairs each result carries.
            batch_size: images per model call.
            threshold: answer ``unknown`` below this confidence (default: the run's calibrated threshold, if any
                was stored and ``threshold`` is None; pass 0 to turn it off).
            errors: ``raise`` (an unreadable input raises :class:`ImageRejected`) or ``return`` (it becomes a
                :class:`PredictionError` in place).

        Returns:
            One result per input, in order.
        """
        items = list(x) if isinstance(x, (list, tuple)) else [x]
        threshold = self.threshold if threshold is None else (threshold or None)
        results: list[Prediction | PredictionError | None] = [None] * len(items)
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            arrays, where, names = [], [], []
            for offset, item in enumerate(chunk):
                name = str(item) if isinstance(item, (str, os.PathLike)) else None
                try:
                    arrays.append(self.preprocess(item))
                except ImageRejected as exc:
                    if errors == "raise":
                        raise
                    results[start + offset] = PredictionError(
                        name or f"#{start + offset}", exc.code, str(exc)
                    )
                    continue
                where.append(start + offset)
                names.append(name)
            if arrays:
                probs = self.predict_proba(np.stack(arrays))
                for idx, pred in zip(where, self._results(probs, top_k, names, threshold), strict=True):
                    results[idx] = Prediction(pred.label, pred.confidence, pred.top_k, pred.source, idx)
        return results  # type: ignore[return-value]

    # other verbs ------------------------------------------------------------------------------------------
    def evaluate(self, data: str | None = None, split: str = "test", top_k: int = 5) -> dict[str, Any]:
        """Metrics on the run's own held-out split, or on ``data`` (see ``imagerec.evaluation``)."""
        from imagerec.evaluation import evaluate_classifier

        return evaluate_classifier(self, data=data, split=split, top_k=top_k)

    def stream(self, source: Any, **kwargs: Any) -> Iterator[Any]:
        """Classify a video file, camera index or stream URL; an iterator of ``FrameResult`` (see ``inference.video``)."""
        from imagerec.video.stream import stream

        return stream(self, source, **kwargs)

    def export(self, format: str = "tflite", **kwargs: Any) -> Path:  # noqa: A002 - the CLI's word
        """Export to ``savedmodel``, ``tflite`` or ``onnx`` with a parity check (see ``imagerec.export``)."""
        from imagerec.export import export_run

        return export_run(self, format=format, **kwargs)

    def __repr__(self) -> str:
        tta = ", tta=hflip" if self.tta else ""
        return f"Classifier({self.name!r}, {len(self.labels)} classes, {self.image_size}px x{self.channels}, runtime={self.runtime}{tta})"


def trained_with_flips(config: dict[str, Any]) -> bool | None:
    """Whether the run's augmentation mirrored images horizontally (None: not recorded)."""
    from imagerec.data.augment import augment_flips

    preset = ((config.get("config") or {}).get("augment") or {}).get("preset")
    return augment_flips(preset) if isinstance(preset, str) else None


def check_flip_tta(config: dict[str, Any]) -> None:
    """Refuse flip TTA for a run that never saw mirrored images (digits, text: a mirror is another thing)."""
    from imagerec.errors import ImagerecError

    if trained_with_flips(config) is False:
        preset = config["config"]["augment"]["preset"]
        raise ImagerecError(
            f"--tta averages each image with its mirror image, but this run was trained without flips "
            f"(augmentation {preset!r}), so mirrored images are not what it learned; drop --tta"
        )


def with_flip_tta(run_fn):
    """``batch -> probs`` averaged over the batch and its horizontal mirror (flip test-time augmentation).

    Like fastai's ``Learner.tta`` and Ultralytics' ``augment=True``, reduced to the one view that is exactly
    label-preserving for a run trained with flips. One model call on the stacked ``2N`` images.
    """

    def run(batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch)
        probs = run_fn(np.concatenate([batch, batch[:, :, ::-1]]))
        return 0.5 * (probs[: len(batch)] + probs[len(batch) :])

    return run


def iter_batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def softmax_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Rescale probabilities by a temperature (T=1: unchanged), via their logs."""
    if temperature == 1.0:
        return probs
    logits = np.log(np.clip(probs, 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


class EMASmoother:
    """Smooth a stream of probability vectors of one source (a video, a browser camera session)."""

    def __init__(self, alpha: float = 0.6):
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {alpha}")
        self.alpha = alpha
        self.state: np.ndarray | None = None

    def update(self, probs: np.ndarray) -> np.ndarray:
        """Fold one probability vector in and return the smoothed vector."""
        probs = np.asarray(probs, dtype=np.float64)
        if self.state is None or self.alpha == 0.0:
            self.state = probs.copy()
        else:
            self.state = self.alpha * self.state + (1.0 - self.alpha) * probs
        return self.state.astype(np.float32)

    def reset(self) -> None:
        self.state = None
