"""The pieces of the learning-rate range test: the recorder callback, the suggestion rules, the result, the plot.

:meth:`imagerec.training.learner.Learner.lr_find` runs the test with them; :func:`imagerec.training.lr_find.lr_find`
is the one-call API (``imagerec lr-find``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imagerec.errors import ImagerecError


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


def plot_range(result: LRFinderResult, path: Path) -> Path:
    """Save the loss-vs-LR curve with both suggestions marked as a PNG at ``path`` (written atomically)."""
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


class RangeRecorder:
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
