"""Per-frame results of ``imagerec video`` / ``Classifier.stream`` (settings: ``imagerec.settings.VideoConfig``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class FrameResult:
    """One frame: its index and time, the (smoothed) label, and whether the model saw it (``classified``).

    A multi-label run's frame also carries ``labels``: the classes whose smoothed probability reaches their own
    threshold, most probable first (``label`` is the first of them, or ``unknown`` when there is none).
    """

    frame: int
    time_s: float
    label: str
    confidence: float
    top_k: list[tuple[str, float]]
    classified: bool
    processing_fps: float = 0.0
    image: np.ndarray | None = field(default=None, repr=False)
    ood_score: float | None = None  # the (smoothed) out-of-distribution score; None without a reference
    reason: str | None = None  # why the label is 'unknown' (low_confidence | out_of_distribution)
    labels: list[str] | None = None  # a multi-label run's (smoothed) label set; None for one label per frame
    # the model's raw row of a classified frame (``Classifier.predict_scores``: probabilities, OOD score and, with
    # ``VideoConfig.embeddings``, the embedding); None for a frame that carries the last label
    scores: np.ndarray | None = field(default=None, repr=False)

    @property
    def shown(self) -> str:
        """What the frame says in words: its label, or a multi-label run's set (``shirt + bag``)."""
        return " + ".join(self.labels) if self.labels else self.label

    def to_dict(self) -> dict[str, Any]:
        out = {
            "frame": self.frame,
            "time_s": round(self.time_s, 4),
            "label": self.label,
            "confidence": round(float(self.confidence), 6),
            "top_k": [{"label": lab, "score": round(float(s), 6)} for lab, s in self.top_k],
        }
        if self.labels is not None:
            out["labels"] = list(self.labels)
        if self.ood_score is not None:
            out["ood_score"] = round(float(self.ood_score), 6)
        if self.reason is not None:
            out["reason"] = self.reason
        return out
