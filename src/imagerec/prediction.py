"""Typed prediction results, and the probability arithmetic every surface shares.

A leaf module (numpy only): the facade (:mod:`imagerec.classifier`) builds answers with it, and the packages the
facade drives (``evaluation``, ``video``, ``server``) read the same names here without importing the facade.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from imagerec.settings import VideoConfig

#: the label of an answer whose confidence is below the ``unknown`` threshold
UNKNOWN = "unknown"


@dataclass(frozen=True)
class Prediction:
    """One image's answer: the top label, its confidence, and the top-k ``(label, score)`` pairs.

    ``label`` is ``"unknown"`` when the confidence is below the calibrated threshold or the out-of-distribution
    score above its threshold (``reason`` says which).
    """

    label: str
    confidence: float
    top_k: list[tuple[str, float]]
    source: str | None = None
    index: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: out-of-distribution score of the image (higher = further from the training data); None without one
    ood_score: float | None = None
    #: why the label is ``unknown``: ``low_confidence`` or ``out_of_distribution`` (None when it is not)
    reason: str | None = None
    #: a multi-label run's answer: the classes at or above their thresholds, most probable first (None: one label)
    labels: list[str] | None = None
    #: a multi-label run's probability of every class (None: one label)
    scores: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.source is not None:
            out["path"] = self.source
        out.update(
            label=self.label,
            confidence=round(float(self.confidence), 6),
            top_k=[{"label": lab, "score": round(float(s), 6)} for lab, s in self.top_k],
        )
        if self.labels is not None:
            out["labels"] = list(self.labels)
            out["scores"] = {name: round(float(p), 6) for name, p in (self.scores or {}).items()}
        if self.ood_score is not None:
            out["ood_score"] = round(float(self.ood_score), 6)
        if self.reason is not None:
            out["reason"] = self.reason
        return out


@dataclass(frozen=True)
class PredictionError:
    """An input that could not be classified (unreadable, not an image, too large...)."""

    source: str
    code: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.source, "error": {"code": self.code, "message": self.message}}


def softmax_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Rescale probabilities by a temperature (T=1: unchanged), via their logs (see ``evaluation.calibration``)."""
    if temperature == 1.0:
        return probs
    logits = np.log(np.clip(probs, 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def split_scores(scores: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray | None]:
    """``(probabilities (N, K), OOD scores (N,) or None)`` of ``Classifier.predict_scores`` rows (or plain
    probabilities); embedding columns after the OOD one (``embedding=True``) are left out."""
    if scores.ndim == 2 and scores.shape[1] > num_classes:
        return scores[:, :num_classes], scores[:, num_classes]
    return scores, None


def split_embedding(scores: np.ndarray, num_classes: int) -> np.ndarray | None:
    """The embeddings ``(N, D)`` of ``Classifier.predict_scores(..., embedding=True)`` rows; None without."""
    if scores.ndim == 2 and scores.shape[1] > num_classes + 1:
        return scores[:, num_classes + 1 :]
    return None


class EMASmoother:
    """Smooth a stream of probability vectors of one source (a video, a browser camera session)."""

    def __init__(self, alpha: float = VideoConfig.smooth):
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


__all__ = ["UNKNOWN", "EMASmoother", "Prediction", "PredictionError", "softmax_temperature", "split_embedding", "split_scores"]
