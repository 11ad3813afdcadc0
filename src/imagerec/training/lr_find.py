"""The learning-rate range test (fastai's ``lr_find``, after Leslie Smith, 2015).

Train for ~100 steps while the learning rate grows exponentially from ``start_lr`` to ``end_lr``; record the
(exponentially smoothed) loss at each step and stop early once it explodes. The loss-vs-LR curve is saved as a
PNG, and two suggestions are returned: the LR of the steepest descent of the loss, and the LR of the minimum
loss divided by 10 (fastai's two classic rules). Nothing is written to a run directory; the model is thrown away.
The data, model, optimizer and loss are the ones ``imagerec train`` would use: both go through one
:class:`~imagerec.training.learner.Learner`.
"""

from __future__ import annotations

import os
from pathlib import Path

from imagerec.settings import LRFindSettings, RunConfig
from imagerec.training.learner import Learner
from imagerec.training.lr_range import LRFinderResult, plot_range, suggest
from imagerec.training.trainer import apply_overrides


def lr_find(
    data: str | os.PathLike,
    *,
    plot: str | os.PathLike | None = LRFindSettings.plot,
    steps: int = LRFindSettings.steps,
    start_lr: float = LRFindSettings.start_lr,
    end_lr: float = LRFindSettings.end_lr,
    config: RunConfig | None = None,
    log=print,
    **overrides,
) -> LRFinderResult:
    """Run the LR range test on ``data`` with the model and settings ``imagerec train`` would use.

    Args:
        data: anything ``imagerec train`` accepts.
        plot: where to save the loss-vs-LR PNG (None: no plot).
        steps: how many optimisation steps (the LR grows exponentially across them).
        start_lr, end_lr: the range swept.
        config, overrides: as for :func:`imagerec.train` (``model=``, ``image_size=``, ``batch_size=``...).

    Returns:
        An :class:`LRFinderResult`; ``.suggestion`` is the steepest-descent learning rate.

    Raises:
        ImagerecError: a range that is empty or not positive, fewer than 5 steps, or an override out of range.

    Example:
        >>> result = imagerec.training.lr_find.lr_find("photos/", model="tutorial-cnn")
        >>> imagerec.train("photos/", out="runs/p", lr=result.suggestion)
    """
    LRFindSettings(steps=steps, start_lr=start_lr, end_lr=end_lr).validate()
    config = apply_overrides(config or RunConfig(), **overrides).validate()
    import keras

    # Seeded before the scan (Learner.build seeds again), as lr-find always was: measured, the second pass over
    # the data then shuffles as before, so a seed gives the curve it gave earlier versions.
    keras.utils.set_random_seed(config.train.seed)
    learner = Learner(data, config, log=log)
    result = learner.prepare().build(distribute=False, splits=("train",)).lr_find(steps, start_lr, end_lr)
    if plot is not None:
        result.plot = plot_range(result, Path(plot))
    return result


__all__ = ["LRFinderResult", "lr_find", "suggest"]
