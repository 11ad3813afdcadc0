"""The facade: ``Classifier.load / predict / evaluate / stream / export`` — the CLI's verbs, in Python.

Example:
    >>> clf = Classifier.load("runs/fmnist")
    >>> [p.label for p in clf.predict(["a.png", "b.jpg"])]
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from imagerec.data.images import load_image
from imagerec.errors import ImagerecError, ImageRejected
from imagerec.multilabel import multilabel_answers, read_thresholds, run_task
from imagerec.prediction import UNKNOWN, EMASmoother, Prediction, PredictionError, softmax_temperature, split_scores
from imagerec.run import RunDir
from imagerec.runtime import get_runtime, outputs_of
from imagerec.runtime.tta import check_flip_tta, with_flip_tta
from imagerec.settings import (
    EXPORT_FORMAT,
    RUNTIME,
    CalibrateSettings,
    EvaluateSettings,
    IssuesSettings,
    PredictSettings,
    VideoConfig,
)
from imagerec.utils import read_json

__all__ = ["UNKNOWN", "Classifier", "EMASmoother", "evaluate", "softmax_temperature", "with_flip_tta"]


class Classifier:
    """A trained model with its labels, preprocessing contract and calibration."""

    def __init__(self, run_dir: RunDir, model, runtime: str = "keras", runtime_fn=None, tta: bool = False):
        self.run_dir = run_dir
        config = run_dir.read_config()
        self.config = config
        self.labels: list[str] = run_dir.read_labels()
        # a multi-label run answers with one threshold per class (see imagerec.multilabel)
        self.task, self.thresholds = run_task(config), read_thresholds(run_dir, self.labels)
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
        self.temperature: float = float(calib.get("temperature", 1.0)) if self.task != "multilabel" else 1.0
        self.threshold: float | None = calib.get("threshold")
        self.ood_threshold: float | None = calib.get("ood_threshold")
        self._reference = None
        hash_file = Path(str(run_dir.model) + ".sha256.json")
        self.version: str = read_json(hash_file)["sha256"][:12] if hash_file.exists() else "unversioned"

    # construction -----------------------------------------------------------------------------------------
    @classmethod
    def load(cls, run: str | os.PathLike, runtime: str = RUNTIME, tta: bool = False) -> Classifier:
        """Load a run directory, or an exported artifact (``.tflite``, ``.onnx``, SavedModel folder).

        A run's Keras model is loaded with Keras ``safe_mode`` after a pre-scan and hash check; an exported
        artifact is loaded only when its sha256 matches its ``export.json`` and its ``labels.json`` sidecar exists.

        Args:
            run: the run directory written by ``imagerec train``, or an artifact / export directory written by
                ``imagerec export``.
            runtime: ``auto`` (default: the fastest runtime that answers like Keras, as recorded in
                ``RUN/exports/runtime.json``; Keras when none was recorded), ``auto-quantized`` (quantized exports
                allowed), ``keras``, or an export of the run: ``tflite``, ``onnx``, ``savedmodel`` or an export
                directory name such as ``tflite-int8`` (see :mod:`imagerec.runtime`).
            tta: test-time augmentation: average the probabilities of each image and its mirror image (twice the
                model cost; for runs trained with horizontal flips, see :func:`with_flip_tta`).

        Raises:
            RunError: the run is missing or incomplete.
            ImagerecError: the runtime has no export in the run, or the artifact was refused.

        Example:
            >>> Classifier.load("runs/fmnist", runtime="tflite").predict("shoe.png")
            >>> Classifier.load("runs/fmnist/exports/tflite-int8/model.tflite")
            >>> Classifier.load("model.onnx")  # written by 'imagerec export RUN -f onnx --out model.onnx'
            >>> Classifier.load("runs/fmnist").runtime  # the runtime that answers, e.g. 'onnx'
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

    def raw_proba(self, batch: np.ndarray) -> np.ndarray:
        """Uncalibrated probabilities ``(N, num_classes)``: the runtime's own output (flip-averaged with ``tta``).

        What temperature scaling is fitted on and what parity compares; answers use :meth:`predict_proba`.
        """
        return self.raw_outputs(batch)[0]

    def raw_outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``(raw_proba, embedding)`` of a preprocessed batch in one model call; the embedding ``(N, D)``
        (L2-normalised penultimate features) is None for an export written without one."""
        if len(batch) == 0:
            return np.zeros((0, len(self.labels)), np.float32), None
        return outputs_of(self._run, batch)

    def embed(self, x: Any, batch_size: int = PredictSettings.batch_size) -> np.ndarray:
        """L2-normalised embeddings ``(N, D)`` of one input or a list (paths, bytes, PIL images, arrays); raises
        ImageRejected for an unreadable input, ImagerecError for a runtime without embeddings (an old export)."""
        from imagerec.runtime import predict_in_batches

        items = list(x) if isinstance(x, (list, tuple)) else [x]
        batch = np.stack([self.preprocess(item) for item in items]) if items else np.zeros((0, 1))
        _, emb = predict_in_batches(self.raw_outputs, batch, batch_size, embedding=True)
        if emb is None:
            raise ImagerecError(f"runtime {self.runtime!r} returns no embedding; re-export the run or use --runtime keras")
        return emb

    @property
    def reference(self):
        """The run's training-embedding reference (``imagerec.openworld.reference``), None when absent."""
        if self._reference is None and self.run_dir.reference.exists():
            from imagerec.openworld.reference import Reference

            self._reference = Reference.load(self.run_dir.reference)
        return self._reference

    def ood_scores(self, embedding: np.ndarray | None) -> np.ndarray | None:
        """Out-of-distribution scores ``(N,)`` (higher = further from the training data), or None."""
        if embedding is None or self.reference is None:
            return None
        return self.reference.score(embedding)

    def predict_scores(self, batch: np.ndarray, embedding: bool = False) -> np.ndarray:
        """Calibrated probabilities with the out-of-distribution score as one more column: ``(N, K + 1)``
        (NaN where there is no score), + the embedding's ``D`` columns with ``embedding`` (when the runtime has
        one). One array per image, so batching, smoothing and stacking carry all; :meth:`answers` reads it."""
        probs, emb = self.raw_outputs(batch)
        ood = self.ood_scores(emb)
        ood = np.full(len(probs), np.nan, np.float32) if ood is None else ood
        extra = [emb] if embedding and emb is not None else []
        return np.concatenate([self.calibrated(probs), ood[:, None], *extra], axis=1).astype(np.float32)

    def keras_model(self):
        """The run's own Keras model (loaded once, safely, when an export answers), for what needs its gradients or
        layers (Grad-CAM); None for an exported artifact without its run."""
        if self.model is None and self.run_dir.model.exists():
            self.model = self.run_dir.load_model()
        return self.model

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        """Calibrated probabilities ``(N, num_classes)`` for a preprocessed batch ``(N, S, S, C)``."""
        return self.calibrated(self.raw_proba(batch))

    def calibrated(self, raw: np.ndarray) -> np.ndarray:
        """``raw`` probabilities (:meth:`raw_proba`) rescaled by the run's calibrated temperature (1: unchanged)."""
        return softmax_temperature(raw, self.temperature)

    def threshold_for(self, threshold: float | None) -> float | None:
        """The ``unknown`` threshold in force when ``threshold`` is asked for.

        None means the run's calibrated threshold (None when uncalibrated); 0 turns ``unknown`` off.
        """
        return self.threshold if threshold is None else (threshold or None)

    def smoother(self, alpha: float = VideoConfig.smooth) -> EMASmoother:
        """A fresh :class:`EMASmoother` for one stream of this classifier's probabilities (video, camera)."""
        return EMASmoother(alpha)

    def answers(
        self,
        probs: np.ndarray,
        top_k: int = PredictSettings.top_k,
        threshold: float | None = None,
        sources: list[str | None] | None = None,
        calibrated: bool = True,
    ) -> list[Prediction]:
        """THE labelling rule: probabilities ``(N, num_classes)`` -> one :class:`Prediction` per row.

        Every surface answers through it: ``predict``, the server (uploads and the camera's smoothed answer),
        ``imagerec video`` (the smoothed answer of each frame) and ``predict --ray``.

        Args:
            probs: calibrated probabilities (:meth:`predict_proba`, possibly smoothed), or raw ones with
                ``calibrated=False`` (the run's temperature is applied first).
            top_k: how many ``(label, score)`` pairs each answer carries (clipped to ``1..num_classes``).
            threshold: answer ``unknown`` below this confidence (see :meth:`threshold_for`: None = the run's
                calibrated threshold, 0 = off).
            sources: each row's input name (a path) or None.
            calibrated: whether ``probs`` already carry the run's temperature.

        Returns:
            One :class:`Prediction` per row, ``index`` = the row.
        """
        probs, ood = split_scores(np.asarray(probs), len(self.labels))
        if not calibrated:
            probs = self.calibrated(probs)
        limit = self.threshold_for(threshold)
        ood_limit = self.ood_threshold if threshold != 0 else None
        k = max(1, min(top_k, len(self.labels)))
        order = np.argsort(-probs, axis=1)[:, :k]
        names = sources if sources is not None else [None] * len(probs)
        if self.task == "multilabel":  # each class at or above its own threshold (imagerec.multilabel)
            return multilabel_answers(probs, self.labels, self.thresholds, order, names, ood, ood_limit)
        out = []
        for i, row in enumerate(order):
            conf = float(probs[i, row[0]])
            score = None if ood is None or np.isnan(ood[i]) else float(ood[i])
            reason = None
            if limit is not None and conf < limit:
                reason = "low_confidence"
            elif ood_limit is not None and score is not None and score > ood_limit:
                reason = "out_of_distribution"
            label = UNKNOWN if reason else self.labels[row[0]]
            top = [(self.labels[j], float(probs[i, j])) for j in row]
            out.append(Prediction(label, conf, top, names[i], i, ood_score=score, reason=reason))
        return out

    def predict(
        self,
        x: Any,
        top_k: int = PredictSettings.top_k,
        batch_size: int = PredictSettings.batch_size,
        threshold: float | None = PredictSettings.threshold,
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

        Raises:
            ImagerecError: ``top_k``, ``batch_size`` or ``threshold`` out of range (see :class:`PredictSettings`).
        """
        PredictSettings(top_k=top_k, batch_size=batch_size, threshold=threshold).validate()
        items = list(x) if isinstance(x, (list, tuple)) else [x]
        results: list[Prediction | PredictionError | None] = [None] * len(items)
        # inputs are decoded batch by batch (a long list never sits decoded in memory): one model call each
        for start in range(0, len(items), batch_size):
            arrays, where, names = [], [], []
            for index in range(start, min(start + batch_size, len(items))):
                item = items[index]
                name = str(item) if isinstance(item, (str, os.PathLike)) else None
                try:
                    arrays.append(self.preprocess(item))
                except ImageRejected as exc:
                    if errors == "raise":
                        raise
                    results[index] = PredictionError(name or f"#{index}", exc.code, str(exc))
                    continue
                where.append(index)
                names.append(name)
            if arrays:
                answers = self.answers(self.predict_scores(np.stack(arrays)), top_k, threshold, names)
                for index, pred in zip(where, answers, strict=True):
                    results[index] = dataclasses.replace(pred, index=index)
        return results  # type: ignore[return-value]

    # other verbs ------------------------------------------------------------------------------------------
    def evaluate(
        self,
        data: str | None = None,
        split: str = EvaluateSettings.split,
        top_k: int = EvaluateSettings.top_k,
        write: bool = True,
        ood: str | None = None,
    ) -> dict[str, Any]:
        """Metrics on the run's own held-out split, or on ``data`` (see :func:`imagerec.evaluate`)."""
        from imagerec.evaluation.evaluator import evaluate_classifier

        return evaluate_classifier(self, data=data, split=split, top_k=top_k, write=write, ood=ood)

    def calibrate(
        self,
        split: str = CalibrateSettings.split,
        target_accuracy: float | None = CalibrateSettings.target_accuracy,
        ood_keep: float | None = CalibrateSettings.ood_keep,
    ) -> dict[str, Any]:
        """Fit temperature scaling, the ``unknown`` confidence threshold and the out-of-distribution threshold on
        ``split``; write ``RUN/calibration.json``. Answers use them at once (``imagerec.evaluation.calibrate``)."""
        from imagerec.evaluation.calibration import calibrate

        return calibrate(self, split=split, target_accuracy=target_accuracy, ood_keep=ood_keep)

    def explain(self, image: Any, out: str | os.PathLike, class_name: str | None = None) -> dict[str, Any]:
        """Grad-CAM of what the model looked at in ``image``, written as a PNG (see ``imagerec.evaluation``)."""
        from imagerec.evaluation.gradcam import explain

        return explain(self, image, out, class_name=class_name)

    def label_issues(
        self,
        splits=IssuesSettings.splits,
        limit: int | None = IssuesSettings.limit,
        max_p_given: float = IssuesSettings.max_p_given,
    ):
        """The likeliest mislabelled images of the run's ``splits`` (see ``imagerec.evaluation.issues``)."""
        from imagerec.evaluation.issues import find_label_issues

        return find_label_issues(self, splits=splits, limit=limit, max_p_given=max_p_given)

    def stream(self, source: Any, **kwargs: Any) -> Iterator[Any]:
        """Classify a video file, camera index or stream URL; an iterator of ``FrameResult`` (see ``imagerec.video``)."""
        from imagerec.video.stream import stream

        return stream(self, source, **kwargs)

    def export(self, format: str = EXPORT_FORMAT, **kwargs: Any) -> Path:  # noqa: A002 - the CLI's word
        """Export to ``savedmodel``, ``tflite`` or ``onnx`` with a parity check (see ``imagerec.export``)."""
        from imagerec.export.exporter import export_run

        return export_run(self, format=format, **kwargs)

    def __repr__(self) -> str:
        tta = ", tta=hflip" if self.tta else ""
        return f"Classifier({self.name!r}, {len(self.labels)} classes, {self.image_size}px x{self.channels}, runtime={self.runtime}{tta})"


def evaluate(
    run: str | os.PathLike,
    data: str | None = None,
    split: str = EvaluateSettings.split,
    top_k: int = EvaluateSettings.top_k,
    write: bool = True,
    tta: bool = False,
    ood: str | None = None,
) -> dict[str, Any]:
    """Evaluate a run on its own held-out ``split`` (default ``test``) or on ``data`` with the same class names.

    ``imagerec.evaluate``: loads the run's :class:`Classifier` and calls :meth:`Classifier.evaluate`.

    Args:
        run: the run directory.
        data: another dataset (folder, split folder, CSV) whose class names are among the run's; its ``split``
            part is used when it has fixed splits, else all of it.
        split: ``test`` or ``val`` (or ``train``) of the run's manifest, when ``data`` is None.
        top_k: k of ``top_k_accuracy``.
        write: write ``RUN/evaluation/`` (metrics.json, predictions.csv, pictures, report.html).
        tta: average each image with its mirror image (runs trained with horizontal flips only).
        ood: a folder of images of none of the classes: adds ``"ood"`` (AUROC, FPR at 95% TPR, and the
            max-softmax baseline's).

    Returns:
        The content of ``metrics.json``: ``accuracy``, ``top_k_accuracy``, ``macro``, ``weighted``,
        ``per_class``, ``confusion_matrix``, ``labels``, ``num_images``, ``ece``, ``roc_auc_ovr`` and more.

    Raises:
        RunError: the run is missing files or was written by another version.
        DataError: the dataset has unknown class names or the split is empty.

    Example:
        >>> m = imagerec.evaluate("runs/fmnist")
        >>> m["accuracy"], m["macro"]["f1"], m["per_class"]["Shirt"]["recall"]
    """
    EvaluateSettings(split=split, top_k=top_k).validate()  # before the model loads
    return Classifier.load(run, tta=tta).evaluate(data=data, split=split, top_k=top_k, write=write, ood=ood)


def compare(runs: list[str | os.PathLike], split: str = EvaluateSettings.split) -> list[dict[str, Any]]:
    """Side-by-side headline metrics, size and latency of ``runs`` (``imagerec compare``); one row per run.

    Example:
        >>> rows = imagerec.classifier.compare(["runs/a", "runs/b"])
    """
    from imagerec.evaluation.compare import compare_runs

    # the runs' own Keras models: compare reports their parameters and size, which an export does not have
    return compare_runs([Classifier.load(run, runtime="keras") for run in runs], split=split)
