"""Typed prediction results, and the probability arithmetic every surface shares.

A leaf module (numpy only): the facade (:mod:`imagerec.classifier`) builds answers with it, and the packages the
facade drives (``evaluation``, ``video``, ``server``) read the same names here without importing the facade.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: the label of an answer whose confidence is below the ``unknown`` threshold
UNKNOWN = "unknown"


@dataclass(frozen=True)
class Prediction:
    """One image's answer: the top label, its confidence, and the top-k ``(label, score)`` pairs.

    ``label`` is ``"unknown"`` when calibration's rejection threshold is on and the confidence is below it.
    """

    label: str
    confidence: float
    top_k: list[tuple[str, float]]
    source: str | None = None
    index: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.source is not None:
            out["path"] = self.source
        out.update(
            label=self.label,
            confidence=round(float(self.confidence), 6),
            top_k=[{"label": lab, "score": round(float(s), 6)} for lab, s in self.top_k],
        )
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


__all__ = ["UNKNOWN", "Prediction", "PredictionError", "softmax_temperature"]
