"""Keras callbacks imagerec adds to the stock ones: crash-safe backup, atomic best model, Rich progress."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np

from imagerec.errors import ImagerecError
from imagerec.run import save_model_file
from imagerec.training import selection
from imagerec.utils import atomic_write_json, read_json


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` whose checkpoint is all-or-nothing.

    Each save writes ``backup/ckpt-<epoch>/`` (weights + metadata) completely, then flips the ``backup/latest``
    pointer with an atomic rename and removes older checkpoints. A ``kill -9`` at any instant leaves either the old
    or the new checkpoint as ``latest``, never a truncated file, and the epoch counter always matches the weights.
    The metadata also carries the kept epoch and its score (set by :class:`AtomicBestModel`, which publishes the
    model first), so the best-model selection survives a resume.
    """

    def __init__(self, backup_dir: str | os.PathLike, history_csv: Path | None = None):
        super().__init__(str(backup_dir), save_freq="epoch", delete_checkpoint=False)
        self.root = Path(backup_dir)
        self.best: selection.Score | None = None
        self.best_epoch: int | None = None
        self.restored_epoch = 0
        self.history_csv = history_csv
        self.history: list[dict] = []

    @property
    def pointer(self) -> Path:
        return self.root / "latest"

    def latest(self) -> Path | None:
        if not self.pointer.exists():
            return None
        ckpt = self.root / self.pointer.read_text().strip()
        return ckpt if (ckpt / "meta.json").exists() else None

    def on_train_begin(self, logs=None):
        self._load_model()

    def _load_model(self):
        ckpt = self.latest()
        if ckpt is None:
            return
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(ckpt / "model.weights.h5")
        meta = read_json(ckpt / "meta.json")
        self.restored_epoch = int(meta["epoch"])
        self.best, self.best_epoch = selection.from_record(meta.get("best")), meta.get("best_epoch")
        self.history = list(meta.get("history", []))
        self.model._initial_epoch = self.restored_epoch
        if self.history_csv is not None:
            self._rewrite_history()

    def _rewrite_history(self) -> None:
        """history.csv = exactly the checkpoint's epochs (a kill may land between the backup and the CSV row)."""
        import csv
        import io

        buf = io.StringIO()
        if self.history:
            keys = sorted(k for k in self.history[0] if k != "epoch")
            writer = csv.DictWriter(buf, fieldnames=["epoch", *keys], lineterminator="\n")
            writer.writeheader()
            for row in self.history:
                writer.writerow({k: row.get(k, "NA") for k in ["epoch", *keys]})
        tmp = self.history_csv.with_name(f".{self.history_csv.name}.tmp")
        tmp.write_text(buf.getvalue())
        os.replace(tmp, self.history_csv)

    def kept(self) -> dict | None:
        """The kept epoch of the latest checkpoint: ``{"epoch": 1-based, "val_accuracy": ..., "val_loss": ...}``."""
        ckpt = self.latest()
        meta = read_json(ckpt / "meta.json") if ckpt else {}
        epoch = meta.get("best_epoch")
        if epoch is None:
            return None
        row = next((r for r in meta.get("history", []) if r.get("epoch") == epoch - 1), {})
        return {"epoch": int(epoch), **{k: row[k] for k in ("val_accuracy", "val_loss") if k in row}}

    def on_epoch_end(self, epoch, logs=None):
        self.history.append({"epoch": epoch, **{k: float(v) for k, v in (logs or {}).items()}})
        self._current_epoch = epoch + 1
        self._save_model()

    def _save_model(self):
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"ckpt-{self._current_epoch:04d}"
        tmp = self.root / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        self.model.save_weights(tmp / "model.weights.h5")
        (tmp / "meta.json").write_text(
            json.dumps(
                {
                    "epoch": self._current_epoch,
                    "best": list(self.best) if self.best is not None else None,
                    "best_epoch": self.best_epoch,
                    "history": self.history,
                }
            )  # fmt: skip
        )
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        final = self.root / name
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        pointer_tmp = self.root / ".latest.tmp"
        pointer_tmp.write_text(name)
        os.replace(pointer_tmp, self.pointer)
        for old in self.root.glob("ckpt-*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)

    def on_train_end(self, logs=None):
        pass


class AtomicBestModel(keras.callbacks.Callback):
    """Save the model to ``path`` (atomically, with its hash manifest) whenever an epoch beats the kept one.

    The rule is :mod:`imagerec.training.selection`'s: the highest ``monitor`` (``val_accuracy``), ties broken by the
    lower loss (``val_loss``); ``monitor=None`` keeps the last epoch. The kept epoch and its score are handed to the
    ``backup``, whose next checkpoint records them. NaN weights are never published: an epoch whose loss is not
    finite is skipped.

    Put it *before* the backup callback: the model file of a new best epoch must be on disk before the checkpoint
    that records that best score. In the other order a kill between the two writes resumed with "best already
    reached" and never published that epoch's model (or kept an older, worse file).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        monitor: str | None = "val_accuracy",
        backup: AtomicBackupAndRestore | None = None,
    ):
        super().__init__()
        self.path = Path(path)
        self.monitor = monitor
        self.backup = backup
        self.best: selection.Score | None = None
        self.best_epoch: int | None = None

    def on_train_begin(self, logs=None):
        self._synced = False

    def on_epoch_begin(self, epoch, logs=None):
        # after every on_train_begin, so the backup has restored its best score by now
        if not self._synced:
            self._synced = True
            if self.backup is not None and self.backup.best is not None and self.path.exists():
                self.best, self.best_epoch = self.backup.best, self.backup.best_epoch

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        loss = logs.get("loss")
        if loss is None or not math.isfinite(loss):
            return
        score = selection.epoch_score(logs, self.monitor, epoch + 1)
        if selection.is_better(score, self.best):
            save_model_file(self.model, self.path)
            self.best, self.best_epoch = score, epoch + 1
            if self.backup is not None:  # recorded by its checkpoint, after the model file is on disk
                self.backup.best, self.backup.best_epoch = score, epoch + 1


class TrainingDiverged(ImagerecError):
    """The loss became NaN or infinite; the last good model and the resumable backup are kept."""

    code = "training_diverged"


class NaNGuard(keras.callbacks.TerminateOnNaN):
    """Stop on a non-finite loss with one readable error line (the last good model and backup are kept).

    Raising (``raise_error=True`` semantics) skips every later callback of the batch and the epoch, so neither
    the best-model file nor the backup is ever written from NaN weights.
    """

    def __init__(self, learning_rate: float | None = None):
        super().__init__(raise_error=True)
        self.learning_rate = learning_rate
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            lr = f" with peak learning rate {self.learning_rate:g}" if self.learning_rate else ""
            raise TrainingDiverged(
                f"training diverged: the loss became {float(loss)} at epoch {self.epoch + 1}, batch {batch + 1}{lr}; "
                "nothing was saved from that point (the last good model and backup are kept); "
                "retry with a lower --lr (see 'imagerec lr-find') or check the data for broken images"
            )


class StopOnSignal(keras.callbacks.Callback):
    """Ctrl-C (SIGINT) or SIGTERM during ``fit``: stop at the next batch boundary, the last complete epoch kept.

    While :meth:`installed` is active, the signal only records itself; this callback raises ``KeyboardInterrupt``
    at the next batch or epoch boundary, in an ordinary frame. Two reasons not to rely on Python's default
    handler: it raises wherever the main thread happens to be, which inside TensorFlow can be a ``__del__`` or a
    weakref callback where the exception is printed as "ignored" and training goes on; and SIGTERM (``kill``,
    ``docker stop``, a batch scheduler's preemption) would otherwise end the process with no message. The
    partially trained epoch is never reported to the backup or best-model callbacks, so ``--resume`` continues
    from the last complete one. A second signal ends the process at once by the signal's default action (the
    backup is kill-safe); if a step hangs in native code without returning to Python, ``kill -9`` does.

    A SIGINT that was already ignored when the process started (a job started with ``&`` from a script) stays
    ignored, as POSIX shells intend; SIGTERM still stops such a run cleanly.
    """

    NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}

    def __init__(self):
        super().__init__()
        self.signum: int | None = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopOnSignal]:
        # signal handlers live in the main thread
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        sigs = set(self.NAMES)
        with _signals_blocked(sigs):
            previous = {sig: signal.getsignal(sig) for sig in sigs}
            for sig, old in previous.items():
                if old is not signal.SIG_IGN:
                    signal.signal(sig, self._handler)
        try:
            yield self
        finally:
            # a signal arriving now waits for the restored handler instead of splitting this swap
            with _signals_blocked(sigs):
                for sig, old in previous.items():
                    signal.signal(sig, old if old is not None else signal.SIG_DFL)

    def _handler(self, signum, _frame) -> None:
        if self.signum is None:
            self.signum = signum
            return
        # a second signal: the user will not wait. The backup is kill-safe, so die by the signal's default action
        # (from the kernel, not a Python exception that could land in a __del__ and be dropped).
        print(
            f"imagerec: {self.NAMES.get(signum, signum)} again: stopping now; --resume continues from the last "
            "complete epoch",
            file=sys.stderr,
            flush=True,
        )
        signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
        os.kill(os.getpid(), signum)

    def check(self, *_args, **_kwargs) -> None:
        """Raise ``KeyboardInterrupt`` if a stop was requested (called at every batch and epoch boundary)."""
        if self.signum is not None:
            raise KeyboardInterrupt

    on_epoch_begin = on_train_batch_begin = on_train_batch_end = on_test_batch_end = check


@contextlib.contextmanager
def _signals_blocked(sigs: set[int]) -> Iterator[None]:
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class EpochTensorBoard(keras.callbacks.TensorBoard):
    """Keras' TensorBoard callback with ``update_freq="epoch"`` taken at its word: Keras 3 still hands every
    batch's metrics to ``summary.scalar`` (which records nothing then), 0.2-0.8 ms a step on a 2-core CPU, up to 2 s
    of a 12-epoch Fashion-MNIST run. What is written is unchanged (tests/training/test_callbacks.py)."""

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, logs if self.update_freq != "epoch" else None)


class ProgressCallback(keras.callbacks.Callback):
    """A Rich progress bar per epoch on a terminal; one plain line per epoch otherwise (logs, CI)."""

    def __init__(self, epochs: int, steps: int, log_path: Path | None = None, console=None):
        super().__init__()
        self.epochs, self.steps = epochs, steps
        self.log_path = log_path
        self.tty = sys.stderr.isatty()
        self.progress = None
        self.console = console

    def _line(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)
        if self.log_path is not None:
            with open(self.log_path, "a", encoding="utf-8") as fh:
                fh.write(text + "\n")

    def on_epoch_begin(self, epoch, logs=None):
        self.t0 = time.perf_counter()
        if self.tty:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn(f"epoch {epoch + 1}/{self.epochs}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[metrics]}"),
                transient=True,
            )
            self.progress.start()
            self.task = self.progress.add_task("train", total=self.steps, metrics="")

    def on_train_batch_end(self, batch, logs=None):
        if self.progress is not None:
            text = " ".join(
                f"{k}={v:.4f}" for k, v in (logs or {}).items() if isinstance(v, (float, np.floating))
            )
            self.progress.update(self.task, completed=batch + 1, metrics=text)

    def close(self) -> None:
        """Take the bar down (also when fit ends by an exception: Ctrl-C, divergence), restoring the cursor."""
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def on_epoch_end(self, epoch, logs=None):
        self.close()
        logs = logs or {}
        parts = " ".join(f"{k}={float(v):.4f}" for k, v in logs.items() if k != "learning_rate")
        lr = logs.get("learning_rate")
        lr_text = f" lr={float(lr):.2e}" if lr is not None else ""
        self._line(f"epoch {epoch + 1}/{self.epochs} {time.perf_counter() - self.t0:.1f}s {parts}{lr_text}")


def write_atomic_json(path: Path, obj) -> None:
    atomic_write_json(path, obj)
