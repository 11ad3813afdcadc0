"""Open-world recognition: embeddings, and "this is not something I know".

- :mod:`imagerec.openworld.features`: the embedding output of every registry model (penultimate, L2-normalised).
- :mod:`imagerec.openworld.reference`: the training embeddings' reference (``RUN/reference.npz``) and the
  out-of-distribution score against it.
- :func:`ood_threshold`: the score above which an answer is ``unknown`` (picked on validation data by
  ``imagerec calibrate``, and at the end of training).
"""

from __future__ import annotations

import numpy as np


def ood_threshold(scores: np.ndarray, keep: float) -> float | None:
    """The out-of-distribution score threshold that keeps ``keep`` of in-distribution ``scores`` (validation
    images): their ``keep`` quantile. None when there are no scores."""
    scores = np.asarray(scores, np.float64)
    scores = scores[np.isfinite(scores)]
    if len(scores) == 0:
        return None
    return float(np.quantile(scores, keep, method="higher"))


__all__ = ["ood_threshold"]
