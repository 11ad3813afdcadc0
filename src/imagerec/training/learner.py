"""One training run as one object, in the steps a person would name (after fastai's ``Learner``).

``prepare`` (scan, split or reuse the manifest, resolve the automatic settings) -> ``build`` (seed, precision,
strategy, tf.data, model) -> ``record`` (manifest, labels, config.json) -> ``fit`` (callbacks, one or two phases,
Ctrl-C/SIGTERM -> :class:`TrainingInterrupted`) -> ``finish`` (the best model's final metrics). ``imagerec train``,
``imagerec lr-find`` and the Ray Train workers all go through it.

Example:
    >>> run = Learner("photos/", RunConfig(), RunDir("runs/photos")).train()
    >>> result = Learner("photos/", RunConfig()).prepare().build(distribute=False, splits=("train",)).lr_find()
"""

from __future__ import annotations

import signal
import time
from typing import Any

import numpy as np

from imagerec import multilabel
from imagerec.data.augment import augment_flips
from imagerec.data.pipeline import PipelineSpec, choose_cache, load_arrays, make_dataset
from imagerec.data.scan import scan_dataset
from imagerec.data.sources import load_sources
from imagerec.data.split import check_trainable, make_split, read_manifest, rows_for
from imagerec.errors import RunError
from imagerec.run import RunDir
from imagerec.settings import LRFindSettings, RunConfig
from imagerec.training import auto
from imagerec.training.finalize import calibrate_and_baseline, final_model, split_metrics, write_reference
from imagerec.training.lr_range import LRFinderResult, RangeRecorder, suggest
from imagerec.training.recipe import (
    class_weights,
    compile_model,
    lr_schedule,
    one_hot,
    set_precision,
    steps_for,
    unfreeze_top,
)
from imagerec.training.record import Run, write_run_record
from imagerec.training.resume import check_resume
from imagerec.training.selection import kept_text, small_validation_warning

SPLITS = ("train", "val", "test")


class TrainingInterrupted(RunError):
    """Ctrl-C or SIGTERM: the last complete epoch is saved and ``--resume`` continues from it."""

    exit_code = 130
    code = "interrupted"


def latest_epoch(backup) -> int:
    """The epoch of the backup's latest complete checkpoint (0: none yet)."""
    from imagerec.utils import read_json

    ckpt = backup.latest()
    return int(read_json(ckpt / "meta.json")["epoch"]) if ckpt else 0


class Learner:
    """The data, the model and the fit of one training run.

    Args:
        data: a folder of class folders, a split folder, a CSV, or ``builtin:NAME``.
        config: the run's settings; ``None`` fields are resolved from the data by :meth:`prepare`.
        run: the run directory to write (None: nothing is written, as for :meth:`lr_find`).
        previous: the run's previous config.json when resuming it.
        log: where progress lines go.
    """

    def __init__(self, data, config: RunConfig, run: RunDir | None = None, previous=None, log=print):
        self.data, self.config, self.run, self.previous, self.log = data, config, run, previous, log
        self.t0 = time.perf_counter()
        self.changed: list[str] = []
        self.arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    # prepare ------------------------------------------------------------------------------------------------------
    def prepare(self) -> Learner:
        """Scan, split (or reuse the run's manifest on resume), resolve the automatic settings, check a resume.

        Runs before TensorFlow is imported, so the scan can decode in forked worker processes (one per core)
        rather than threads (see imagerec.data.parallel): 2.3x faster on Fashion-MNIST's 70k PNGs on 2 cores.
        """
        self.source = load_sources(self.data, self.config.data.follow_symlinks)
        self.scan = scan_dataset(self.source, keep_decoded=True)
        if self.scan.invalid and self.run is not None:  # lr-find (no run) never said it
            self.log(
                f"skipping {len(self.scan.invalid)} invalid file(s); see 'imagerec data inspect {self.data}'"
            )
        self.class_names = check_trainable(self.scan, self.config.data.max_invalid_ratio)
        d, seed = self.config.data, self.config.train.seed
        self.rows = (
            read_manifest(self.run.manifest) if self.previous else make_split(self.scan, d.val, d.test, seed)
        )
        self.config = auto.resolve(self.config, self.scan, len(rows_for(self.rows, "train")))
        if self.previous:
            self.changed = check_resume(self.previous, self.config, self.class_names)
            for line in self.changed:
                self.log(f"resume: {line}")
        return self

    # build --------------------------------------------------------------------------------------------------------
    def build(self, distribute: bool = True, splits: tuple[str, ...] = SPLITS) -> Learner:
        """Seed everything, pick the precision and the strategy, load ``splits`` into tf.data, build the model.

        Args:
            distribute: use ``config.train.strategy`` (a cluster, several GPUs), scaling the batch and learning
                rate by the replicas; False: one replica, the configured batch and learning rate.
            splits: the splits to load (``train`` among them).
        """
        import keras
        import tensorflow as tf

        from imagerec.models.registry import build_model, count_flops

        d, t = self.config.data, self.config.train
        keras.utils.set_random_seed(t.seed)
        if t.deterministic:
            tf.config.experimental.enable_op_determinism()
        self.policy = set_precision(t.mixed_precision)
        self._choose_strategy(distribute)
        for split in splits:
            self.arrays[split] = load_arrays(
                rows_for(self.rows, split), self.class_names, self.pipe, self.scan.decoded
            )
        self.scan.decoded.clear()  # the arrays hold the pixels now
        self._make_datasets(distribute)
        with self.strategy.scope():
            self.model = build_model(self.config.model.name, d.image_size, d.channels, len(self.class_names),
                                     self.config.model)  # fmt: skip
        self.flops = count_flops(self.model)
        return self

    def _choose_strategy(self, distribute: bool) -> None:
        import tensorflow as tf

        from imagerec.distributed.strategy import get_strategy, scale_for_replicas

        d, t = self.config.data, self.config.train
        if distribute:
            self.strategy, self.strategy_info = get_strategy(t.strategy)
            self.strategy_info.update(
                scale_for_replicas(t.batch_size, t.learning_rate, self.strategy_info["replicas"])
            )
            batch_size = self.strategy_info["global_batch_size"]
            self.learning_rate = self.strategy_info["learning_rate"]  # linear scaling: base lr x replicas
        else:
            self.strategy, self.strategy_info = (
                tf.distribute.get_strategy(),
                {"name": "default", "replicas": 1},
            )
            batch_size, self.learning_rate = t.batch_size, t.learning_rate
        cache = choose_cache(d.cache, len(self.rows), PipelineSpec(d.image_size, d.channels))
        self.pipe = PipelineSpec(d.image_size, d.channels, d.resize, batch_size, cache, t.deterministic)

    def _make_datasets(self, distribute: bool) -> None:
        from imagerec.data.augment import build_augment
        from imagerec.distributed.strategy import shard_by_data

        t, k = self.config.train, len(self.class_names)
        augment = build_augment(self.config.augment.preset, seed=t.seed)
        train = one_hot(
            make_dataset(None, self.class_names, self.pipe, True, augment, t.seed, self.arrays["train"]), k
        )
        self.train_ds = shard_by_data(train) if distribute else train
        val = self.arrays.get("val")
        has_val = val is not None and len(val[1]) > 0
        self.val_ds = (
            one_hot(make_dataset(None, self.class_names, self.pipe, False, None, t.seed, val), k)
            if has_val
            else None
        )
        self.monitor = ("val_" if has_val else "") + multilabel.monitored(self.config.model.task)
        self.steps = steps_for(len(self.arrays["train"][1]), self.pipe.batch_size)

    def describe(self) -> str:
        """The one line that opens a training log: data, model, schedule, precision, strategy."""
        d, t, n = self.config.data, self.config.train, {s: len(a[1]) for s, a in self.arrays.items()}
        return (
            f"data: {n['train']} train / {n['val']} val / {n['test']} test images, {len(self.class_names)} classes, "
            f"{d.image_size}x{d.image_size}x{d.channels}; model {self.config.model.name}, {t.epochs} epochs, "
            f"batch {t.batch_size}, lr {self.learning_rate:g} (global batch {self.pipe.batch_size}), "
            f"augment {self.config.augment.preset}, precision {self.policy}, strategy {self.strategy_info['name']}"
        )

    # record -------------------------------------------------------------------------------------------------------
    def record(self) -> dict[str, Any]:
        """Write the split manifest (a new run only), labels.json and config.json; return the config record."""
        self.config_record = write_run_record(self)
        return self.config_record

    # fit ----------------------------------------------------------------------------------------------------------
    def callbacks(self) -> list:
        """Stop on a signal, keep the best model, back up every epoch, guard NaN, log history and progress."""
        import keras

        from imagerec.distributed.strategy import worker_callbacks
        from imagerec.training.callbacks import (
            AtomicBackupAndRestore,
            AtomicBestModel,
            EpochTensorBoard,
            NaNGuard,
            ProgressCallback,
            StopOnSignal,
        )

        run, t = self.run, self.config.train
        self.backup = AtomicBackupAndRestore(run.backup, history_csv=run.history)
        self.stopper = StopOnSignal()
        self.progress = ProgressCallback(t.epochs, self.steps, run.log)
        callbacks = [
            self.stopper,  # raises at batch/epoch boundaries: a half-done epoch never reaches on_epoch_end
            # before the backup: see AtomicBestModel's docstring
            # no validation split: keep the last epoch (see imagerec.training.selection)
            AtomicBestModel(run.model, self.monitor if self.val_ds is not None else None, self.backup),
            self.backup,
            NaNGuard(t.learning_rate),
            keras.callbacks.CSVLogger(str(run.history), append=bool(self.previous)),
            EpochTensorBoard(str(run.tensorboard), write_graph=False, profile_batch=0),
            self.progress,
            *worker_callbacks(self.strategy_info, self.log),
        ]
        if t.early_stopping:
            callbacks.append(
                keras.callbacks.EarlyStopping(monitor=self.monitor, patience=t.early_stopping, mode="auto")
            )
        return callbacks

    def fit(self) -> float:
        """Train to ``config.train.epochs`` (continuing from the backup on resume); return the seconds it took.

        Raises:
            TrainingInterrupted: on Ctrl-C or SIGTERM (exit code 130 or 143), after the last complete epoch is saved.
        """
        from imagerec.models.backbones import get_backbone_layer

        callbacks = self.callbacks()
        backbone = get_backbone_layer(self.model)
        fine_tune = backbone is not None and self.config.model.fine_tune_layers
        phase_one = max(1, self.config.train.epochs // 3) if fine_tune else self.config.train.epochs
        fit_t0 = time.perf_counter()
        with self.strategy.scope():
            if backbone is not None:
                backbone.trainable = False
            compile_model(
                self.model, self.config, lr_schedule(self.config, self.steps, phase_one, self.learning_rate)
            )
        try:
            with self.stopper.installed():
                self._fit_phases(backbone, phase_one, callbacks)
                self.stopper.check()  # a signal during the last epoch's saves: no batch boundary follows
        except KeyboardInterrupt:
            raise self._interrupted() from None
        finally:
            self.progress.close()
        return time.perf_counter() - fit_t0

    def _fit_phases(self, backbone, phase_one: int, callbacks: list) -> None:
        """Phase one (all layers, or the head over a frozen backbone); phase two: fine-tune the backbone's top."""
        import keras

        t = self.config.train
        weights = class_weights(self.arrays["train"][1], len(self.class_names), t.class_weights)
        # shuffle=False: train_ds shuffles itself (Keras ignores the flag for a tf.data.Dataset, with a warning)
        fit = {"validation_data": self.val_ds, "callbacks": callbacks, "class_weight": weights, "verbose": 0,
               "shuffle": False}  # fmt: skip
        if latest_epoch(self.backup) < phase_one:
            self.model.fit(self.train_ds, epochs=phase_one, **fit)
        if backbone is None or phase_one >= t.epochs:
            return
        for cb in callbacks:  # phase two's on_train_begin would otherwise reopen history.csv with "w"
            if isinstance(cb, keras.callbacks.CSVLogger):
                cb.append = True
        with self.strategy.scope():
            unfreeze_top(backbone, self.config.model.fine_tune_layers)
            schedule = lr_schedule(self.config, self.steps, t.epochs - phase_one, self.learning_rate / 10)
            compile_model(self.model, self.config, schedule)
        initial = max(phase_one, latest_epoch(self.backup))
        self.model.fit(self.train_ds, epochs=t.epochs, initial_epoch=initial, **fit)

    def _interrupted(self) -> TrainingInterrupted:
        done, path = latest_epoch(self.backup), str(self.run.path)
        by = " by SIGTERM" if self.stopper.signum == signal.SIGTERM else ""
        if done >= self.config.train.epochs:
            where = f"after its last epoch; all {done} epochs are saved in {path!r}; evaluate and finish"
        elif done:
            where = f"during epoch {done + 1}; epoch {done} is saved in {path!r}; continue"
        else:  # nothing to resume from yet: --resume starts over (with the run's settings)
            where = f"during epoch 1, before any epoch was saved in {path!r}; start again"
        err = TrainingInterrupted(
            f"training interrupted{by} {where} with: imagerec train {self.data} --out {self.run.path} --resume"
        )
        # 130 for Ctrl-C, 143 for SIGTERM, as shells report them
        err.exit_code = 128 + int(self.stopper.signum or signal.SIGINT)
        return err

    # finish -------------------------------------------------------------------------------------------------------
    def evaluate(self, model, split: str, temperature: float = 1.0) -> dict[str, float]:
        """Accuracy, top-5, ECE and confidence of ``model`` on ``split`` at ``temperature``; for a run trained
        with mirrored images also the accuracy with flip TTA (``--tta``). Empty split: ``{}``."""
        from imagerec.runtime import predict_in_batches

        x, y = self.arrays[split]
        if len(y) == 0:
            return {}
        batch_size = self.config.train.batch_size
        fn = self.runtime_of(model)
        probs = predict_in_batches(fn, x, batch_size)
        if y.ndim == 2:  # multi-hot targets: a multi-label run (see imagerec.multilabel)
            return multilabel.split_metrics(self, split, y, probs)
        out = split_metrics(probs, y, temperature)
        if augment_flips(self.config.augment.preset):
            from imagerec.runtime.tta import with_flip_tta

            tta = predict_in_batches(with_flip_tta(fn), x, batch_size)
            out["accuracy_tta"] = float((tta.argmax(1) == y).mean())
        return out

    def runtime_of(self, model):
        """The keras runtime of ``model``: one tf.function (one trace) for every split, the TTA and the
        reference, not one per split."""
        from imagerec.runtime import get_runtime

        if getattr(self, "_runtime", (None,))[0] is not model:
            d = self.config.data
            info = {"image_size": d.image_size, "channels": d.channels}
            self._runtime = (model, get_runtime("keras")(model, info))
        return self._runtime[1]

    def finish(self, fit_seconds: float) -> Run:
        """Make the kept model final (:mod:`imagerec.training.finalize`), fit its temperature on val, evaluate it
        on val and test, write metrics.json, log the closing line; return the Run."""
        run = self.run
        if not run.model.exists():
            run.save_model(self.model)
        best = final_model(run, self.train_ds)  # the kept weights with their own BatchNorm statistics
        fn, batch_size = self.runtime_of(best), self.config.train.batch_size
        write_reference(run, fn, *self.arrays["train"], len(self.class_names), batch_size)
        t = calibrate_and_baseline(run, best, fn, *self.arrays["val"], batch_size, self.log)
        metrics = {"val": self.evaluate(best, "val", t), "test": self.evaluate(best, "test", t)}
        epochs, kept = latest_epoch(self.backup), self.backup.kept()
        trained = len(self.arrays["train"][1]) * max(1, epochs - (self.backup.restored_epoch or 0))
        metrics.update({
            "epochs_completed": epochs,
            "best_epoch": kept["epoch"] if kept else None,
            "fit_seconds": round(fit_seconds, 2),
            "total_seconds": round(time.perf_counter() - self.t0, 2),
            "images_per_second": round(trained / max(fit_seconds, 1e-9), 1),
            "flops_per_image": self.flops,
        })  # fmt: skip
        run.write_json("metrics.json", metrics)
        val, test = metrics["val"], metrics["test"]
        tta = f" ({test['accuracy_tta']:.4f} with --tta)" if "accuracy_tta" in test else ""
        tta += f", test ECE {test['ece']:.4f}" if "ece" in test else ""
        self.log(
            f"done in {metrics['total_seconds']:.0f}s: {kept_text(kept, epochs)}, val accuracy "
            f"{val.get('accuracy', float('nan')):.4f}, test accuracy {test.get('accuracy', float('nan')):.4f}{tta}; "
            f"run saved in {run.path}"
        )
        return Run(run.path, self.config_record, metrics)

    # verbs --------------------------------------------------------------------------------------------------------
    def train(self) -> Run:
        """The whole run: prepare, build, record, fit, finish."""
        self.prepare().build()
        self.log(self.describe())
        given = any(img.split == "val" for img in self.scan.images)  # split folders, a CSV split column
        if warning := small_validation_warning(self.arrays["val"][1], len(self.class_names), given):
            self.log(warning)
        self.record()
        return self.finish(self.fit())

    def lr_find(
        self,
        steps: int = LRFindSettings.steps,
        start_lr: float = LRFindSettings.start_lr,
        end_lr: float = LRFindSettings.end_lr,
    ) -> LRFinderResult:
        """The LR range test on the built model: ``steps`` steps while the LR grows from ``start_lr`` to ``end_lr``."""
        compile_model(self.model, self.config, start_lr, metrics=False)
        recorder = RangeRecorder(start_lr, end_lr, steps)
        self.log(
            f"lr-find: {self.config.model.name} on {len(self.arrays['train'][1])} images, batch "
            f"{self.config.train.batch_size}, {steps} steps from {start_lr:g} to {end_lr:g}"
        )
        self.model.fit(
            self.train_ds.repeat(),
            steps_per_epoch=steps,
            epochs=1,
            callbacks=[recorder],
            verbose=0,
            shuffle=False,
        )
        steepest, min10 = suggest(recorder.lrs, recorder.losses)
        return LRFinderResult(recorder.lrs, recorder.losses, steepest, min10)
