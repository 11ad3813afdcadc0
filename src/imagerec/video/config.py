"""Per-frame results of ``imagerec video`` / ``Classifier.stream`` (settings: ``imagerec.settings.VideoConfig``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class FrameResult:
    """One frame: its index and time, the (smoothed) label, and whether the model saw it (``classified``)."""

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

    def to_dict(self) -> dict[str, Any]:
        out = {
            "frame": self.frame,
            "time_s": round(self.time_s, 4),
            "label": self.label,
            "confidence": round(float(self.confidence), 6),
            "top_k": [{"label": lab, "score": round(float(s), 6)} for lab, s in self.top_k],
        }
        if self.ood_score is not None:
            out["ood_score"] = round(float(self.ood_score), 6)
        if self.reason is not None:
            out["reason"] = self.reason
        return out
