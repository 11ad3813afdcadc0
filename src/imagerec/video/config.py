"""Settings and per-frame results of ``imagerec video`` / ``Classifier.stream``."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from imagerec.video.sources import VideoError


@dataclass(frozen=True)
class VideoConfig:
    """Settings of one stream (the CLI flags of ``imagerec video``).

    Attributes:
        every: classify every N-th frame (the others carry the last label). Exclusive with ``fps``.
        fps: classify at most F frames per second of video time (0 = every frame).
        smooth: EMA factor in [0, 1): 0 = off; higher = steadier, slower to react.
        roi: ``(x, y, w, h)`` region classified (the whole frame when None).
        threshold: answer ``unknown`` below this confidence (None = the run's calibrated threshold; 0 = off).
        top_k: ``(label, score)`` pairs per result.
        batch_size: most frames per model call.
        open_timeout_s / read_timeout_s: a source that opens or sends no frame within this raises VideoError (a
            live source's capture process still silent 1 s later, e.g. stuck inside FFmpeg, is killed).
        reconnects: consecutive attempts to reopen a live stream that drops (back-off 0.5 s, 1 s, 2 s, ... up to
            8 s; the count restarts once a frame arrives).
        live: treat the source as live (keep only the newest frame); None = cameras and URLs are live.
        keep_images: attach the BGR frame to each result (needed to draw or write video).
    """

    every: int = 1
    fps: float = 0.0
    smooth: float = 0.6
    roi: tuple[int, int, int, int] | None = None
    threshold: float | None = None
    top_k: int = 3
    batch_size: int = 16
    open_timeout_s: float = 10.0
    read_timeout_s: float = 10.0
    reconnects: int = 5
    live: bool | None = None
    keep_images: bool = True

    def validate(self) -> VideoConfig:
        if self.every < 1:
            raise VideoError(f"every must be >= 1, got {self.every}")
        if self.fps < 0:
            raise VideoError(f"fps must be >= 0 (0 = every frame), got {self.fps}")
        if self.every > 1 and self.fps > 0:
            raise VideoError("give either every (--every) or fps (--fps), not both")
        if not 0.0 <= self.smooth < 1.0:
            raise VideoError(f"smooth must be in [0, 1) (0 = off, 0.6 = default), got {self.smooth}")
        if self.roi is not None and (len(self.roi) != 4 or min(self.roi[2:]) <= 0 or min(self.roi[:2]) < 0):
            raise VideoError(f"roi must be x,y,w,h with x,y >= 0 and w,h > 0, got {self.roi}")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise VideoError(f"threshold must be in [0, 1], got {self.threshold}")
        if self.top_k < 1 or self.batch_size < 1 or self.reconnects < 0:
            raise VideoError("top_k and batch_size must be >= 1 and reconnects >= 0")
        if self.open_timeout_s <= 0 or self.read_timeout_s <= 0:
            raise VideoError("open_timeout_s and read_timeout_s must be > 0 seconds")
        return self

    @classmethod
    def from_overrides(cls, base: VideoConfig | None = None, **overrides: Any) -> VideoConfig:
        names = [f.name for f in dataclasses.fields(cls)]
        for key in overrides:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                raise VideoError(
                    f"unknown video setting {key!r}" + (f"; did you mean {close[0]!r}?" if close else "")
                )
        return dataclasses.replace(
            base or cls(), **{k: v for k, v in overrides.items() if v is not None}
        ).validate()


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

    def to_dict(self) -> dict[str, Any]:
        return {
            "frame": self.frame,
            "time_s": round(self.time_s, 4),
            "label": self.label,
            "confidence": round(float(self.confidence), 6),
            "top_k": [{"label": lab, "score": round(float(s), 6)} for lab, s in self.top_k],
        }
