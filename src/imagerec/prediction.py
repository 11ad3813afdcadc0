"""Typed prediction results."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
