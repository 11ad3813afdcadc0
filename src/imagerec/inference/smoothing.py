"""Temporal smoothing of class probabilities, shared by ``imagerec video`` and the web page's camera mode.

An exponential moving average: ``state = alpha * state + (1 - alpha) * probs``. ``alpha = 0`` turns smoothing off;
values near 1 react slowly and flicker less.
"""

from __future__ import annotations

import numpy as np


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
