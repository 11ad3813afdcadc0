"""The learning-rate range test (fastai's ``lr_find``, after Leslie Smith, 2015).

Train for ~100 steps while the learning rate grows exponentially from ``start_lr`` to ``end_lr``; record the
(exponentially smoothed) loss at each step and stop early once it explodes. The loss-vs-LR curve is saved as a
PNG, and two suggestions are returned: the LR of the steepest descent of the loss, and the LR of the minimum
loss divided by 10 (fastai's two classic rules). Nothing is written to a run directory; the model is thrown away.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imagerec.errors import ImagerecError
from imagerec.settings import RunConfig


@dataclass
class LRFinderResult:
    """Learning rates tried, their smoothed losses, and the suggestions."""

    learning_rates: list[float]
    losses: list[float]
    steepest: float
    min_loss_over_10: float
    plot: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def suggestion(self) -> float:
        """The steepest-descent LR (the fastai default)."""
        return self.steepest


def suggest(learning_rates: list[float], losses: list[float]) -> tuple[float, float]:
    """``(steepest, min_loss / 10)`` from a smoothed loss curve (the ends are skipped, as in fastai)."""
    if len(losses) < 5:
        raise ImagerecError(
            f"the LR range test ran only {len(losses)} steps; it needs at least 5 (more images or --steps)"
        )
    lrs, loss = np.asarray(learning_rates), np.asarray(losses)
    skip = max(1, len(loss) // 10)
    grads = np.gradient(loss, np.log10(lrs))
    window = slice(skip, max(skip + 1, len(loss) - skip))
    steepest = float(lrs[window][int(np.argmin(grads[window]))])
    min_over_10 = float(lrs[int(np.argmin(loss))] / 10)
    return steepest, min_over_10


def _plot(result: LRFinderResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(result.learning_rates, result.losses)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss (smoothed)")
    ax.axvline(result.steepest, color="tab:red", linestyle="--", label=f"steepest {result.steepest:.2e}")
    ax.axvline(
        result.min_loss_over_10,
        color="tab:green",
        linestyle=":",
        label=f"min/10 {result.min_loss_over_10:.2e}",
    )
    ax.legend()
    ax.set_title("learning-rate range test")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def lr_find(
    data: str | os.PathLike,
    *,
    plot: str | os.PathLike | None = "lr_find.png",
    steps: int = 100,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
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

    Example:
        >>> result = imagerec.training.lr_find.lr_find("photos/", model="tutorial-cnn")
        >>> imagerec.train("photos/", out="runs/p", lr=result.suggestion)
    """
    import keras

    from imagerec.data.augment import build_augment
    from imagerec.data.pipeline import PipelineSpec, load_arrays, make_dataset
    from imagerec.data.scan import scan_dataset
    from imagerec.data.sources import load_source
    from imagerec.data.split import check_trainable, make_split, rows_for
    from imagerec.models.registry import build_model
    from imagerec.training import auto
    from imagerec.training.fit import _one_hot
    from imagerec.training.trainer import apply_overrides, set_precision

    if not (0 < start_lr < end_lr) or steps < 5:
        raise ImagerecError(
            f"lr_find needs 0 < start_lr < end_lr and steps >= 5; got {start_lr}, {end_lr}, {steps}"
        )
    config = apply_overrides(config or RunConfig(), **overrides)
    keras.utils.set_random_seed(config.train.seed)
    result = scan_dataset(load_source(data))
    class_names = check_trainable(result, config.data.max_invalid_ratio)
    rows = rows_for(make_split(result, config.data.val, config.data.test, config.train.seed), "train")
    config = auto.resolve(config, result, len(rows))
    d, t = config.data, config.train
    set_precision(t.mixed_precision)
    pipe = PipelineSpec(d.image_size, d.channels, d.resize, t.batch_size, "memory")
    arrays = load_arrays(rows, class_names, pipe)
    augment = build_augment(config.augment.preset, seed=t.seed)
    ds = _one_hot(
        make_dataset(None, class_names, pipe, True, augment, t.seed, arrays), len(class_names)
    ).repeat()
    model = build_model(config.model.name, d.image_size, d.channels, len(class_names), config.model)
    optimizer = (
        keras.optimizers.SGD(start_lr, momentum=0.9, nesterov=True)
        if t.optimizer == "sgd"
        else keras.optimizers.AdamW(start_lr, weight_decay=t.weight_decay)
    )
    model.compile(
        optimizer=optimizer, loss=keras.losses.CategoricalCrossentropy(label_smoothing=t.label_smoothing)
    )
    recorder = _RangeRecorder(start_lr, end_lr, steps)
    log(
        f"lr-find: {config.model.name} on {len(rows)} images, batch {t.batch_size}, {steps} steps from {start_lr:g} to {end_lr:g}"
    )
    model.fit(ds, steps_per_epoch=steps, epochs=1, callbacks=[recorder], verbose=0)
    steepest, min10 = suggest(recorder.lrs, recorder.losses)
    out = LRFinderResult(recorder.lrs, recorder.losses, steepest, min10)
    if plot is not None:
        out.plot = _plot(out, Path(plot))
    return out


class _RangeRecorder:
    """A Keras callback (built lazily so importing this module needs no Keras): exponential LR, smoothed loss."""

    def __new__(cls, start_lr: float, end_lr: float, steps: int):
        import keras

        class Recorder(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.factor = (end_lr / start_lr) ** (1 / max(1, steps - 1))
                self.lrs: list[float] = []
                self.losses: list[float] = []
                self.avg, self.best, self.step = 0.0, math.inf, 0

            def on_train_batch_begin(self, batch, logs=None):
                self.model.optimizer.learning_rate.assign(start_lr * self.factor**self.step)

            def on_train_batch_end(self, batch, logs=None):
                # Keras reports the running mean over the epoch; recover this batch's loss from it.
                mean = float((logs or {}).get("loss", math.nan))
                loss = mean * (self.step + 1) - getattr(self, "_sum", 0.0)
                self._sum = mean * (self.step + 1)
                lr = start_lr * self.factor**self.step
                self.step += 1
                if not math.isfinite(loss):
                    self.model.stop_training = True
                    return
                self.avg = 0.98 * self.avg + 0.02 * loss
                smooth = self.avg / (1 - 0.98**self.step)
                self.lrs.append(lr)
                self.losses.append(smooth)
                self.best = min(self.best, smooth)
                if self.step > 10 and smooth > 4 * self.best:
                    self.model.stop_training = True

        return Recorder()
