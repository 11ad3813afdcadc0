"""The body of a training run (kept apart from the option handling in ``trainer.py``)."""

from __future__ import annotations

import signal
import time
from typing import Any

import numpy as np

from imagerec.data.augment import augment_flips
from imagerec.data.pipeline import PipelineSpec, choose_cache, load_arrays, make_dataset
from imagerec.data.scan import scan_dataset
from imagerec.data.sources import load_source
from imagerec.data.split import check_trainable, make_split, read_manifest, rows_for, write_manifest
from imagerec.errors import ImagerecError, RunError
from imagerec.run import FORMAT_VERSION, RunDir
from imagerec.settings import RunConfig
from imagerec.training import auto
from imagerec.training.trainer import (
    Run,
    _check_resume,
    compile_model,
    library_versions,
    set_precision,
    steps_for,
)


class TrainingInterrupted(RunError):
    """Ctrl-C or SIGTERM: the last complete epoch is saved and ``--resume`` continues from it."""

    exit_code = 130
    code = "interrupted"


def _one_hot(ds, num_classes: int):
    import tensorflow as tf

    from imagerec.data.pipeline import parallel_calls

    return ds.map(lambda x, y: (x, tf.one_hot(y, num_classes)), num_parallel_calls=parallel_calls())


def _class_weights(labels: np.ndarray, num_classes: int, mode: str) -> dict[int, float] | None:
    if mode == "none":
        return None
    if mode != "auto":
        raise ImagerecError(f"unknown class_weights {mode!r}; choose none or auto")
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(labels)
    weights = compute_class_weight("balanced", classes=present, y=labels)
    out = {int(c): float(w) for c, w in zip(present, weights, strict=True)}
    return {c: out.get(c, 1.0) for c in range(num_classes)}


def _evaluate(model, x: np.ndarray, y: np.ndarray, batch_size: int, flips: bool = False) -> dict[str, float]:
    """Accuracy and top-5 of ``model`` on ``(x, y)``; with ``flips`` (a run trained with mirrored images) also the
    accuracy with flip test-time augmentation (``imagerec evaluate --tta``)."""
    if len(y) == 0:
        return {}
    probs = predict_arrays(model, x, batch_size)
    top1 = probs.argmax(1)
    k = min(5, probs.shape[1])
    topk = np.argsort(-probs, axis=1)[:, :k]
    out = {
        "accuracy": float((top1 == y).mean()),
        f"top{k}_accuracy": float((topk == y[:, None]).any(1).mean()),
        "num_images": int(len(y)),
    }
    if flips:
        mirrored = predict_arrays(model, np.ascontiguousarray(x[:, :, ::-1]), batch_size)
        out["accuracy_tta"] = float(((probs + mirrored).argmax(1) == y).mean())
    return out


def predict_arrays(model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Probabilities for a uint8 array batch through a compiled function (no per-call Keras overhead)."""
    import tensorflow as tf

    fn = tf.function(lambda t: model(t, training=False), reduce_retracing=True)
    out = [fn(tf.constant(x[i : i + batch_size], tf.float32)).numpy() for i in range(0, len(x), batch_size)]
    return (
        np.concatenate(out).astype(np.float32) if out else np.zeros((0, model.output_shape[-1]), np.float32)
    )


def _prepare_data(data, run: RunDir, config: RunConfig, previous, log):
    """Scan, split (or reuse the run's manifest on resume), resolve the automatic settings."""
    source = load_source(data)
    result = scan_dataset(source, keep_decoded=True)
    if result.invalid:
        log(f"skipping {len(result.invalid)} invalid file(s); see 'imagerec data inspect {data}'")
    class_names = check_trainable(result, config.data.max_invalid_ratio)
    if previous:
        rows = read_manifest(run.manifest)
    else:
        rows = make_split(result, config.data.val, config.data.test, config.train.seed)
    n_train = len(rows_for(rows, "train"))
    resolved = auto.resolve(config, result, n_train)
    return source, result, class_names, rows, resolved


def fit_run(data, run: RunDir, config: RunConfig, previous: dict[str, Any] | None, log, t0: float) -> Run:
    # The scan runs before TensorFlow is imported, so it can decode in forked worker processes (one per core)
    # rather than threads (see imagerec.data.parallel): 2.3x faster on Fashion-MNIST's 70k PNGs on 2 cores.
    source, result, class_names, rows, config = _prepare_data(data, run, config, previous, log)
    import keras
    import tensorflow as tf

    from imagerec.distributed.strategy import (
        get_strategy,
        scale_for_replicas,
        shard_by_data,
        worker_callbacks,
    )
    from imagerec.models.backbones import get_backbone_layer
    from imagerec.models.registry import build_model, count_flops, get_model_spec
    from imagerec.training.callbacks import (
        AtomicBackupAndRestore,
        AtomicBestModel,
        NaNGuard,
        ProgressCallback,
        StopOnSignal,
    )

    keras.utils.set_random_seed(config.train.seed)
    if config.train.deterministic:
        tf.config.experimental.enable_op_determinism()
    changed = _check_resume(previous, config, class_names) if previous else []
    for line in changed:
        log(f"resume: {line}")
    d, t = config.data, config.train
    spec = get_model_spec(config.model.name)
    pipe = PipelineSpec(
        d.image_size,
        d.channels,
        d.resize,
        t.batch_size,
        choose_cache(d.cache, len(rows), PipelineSpec(d.image_size, d.channels)),
        t.deterministic,
    )
    policy = set_precision(t.mixed_precision)
    strategy, strategy_info = get_strategy(t.strategy)
    strategy_info.update(scale_for_replicas(t.batch_size, t.learning_rate, strategy_info["replicas"]))
    pipe = PipelineSpec(
        pipe.image_size,
        pipe.channels,
        pipe.resize,
        strategy_info["global_batch_size"],
        pipe.cache,
        pipe.deterministic,
    )
    lr = strategy_info["learning_rate"]  # linear scaling: base lr x replicas (logged, saved in config.json)
    run.path.mkdir(parents=True, exist_ok=True)
    manifest_hash = write_manifest(rows, run.manifest) if not previous else previous.get("data_fingerprint")
    run.write_json("labels.json", class_names)
    arrays = {
        s: load_arrays(rows_for(rows, s), class_names, pipe, result.decoded) for s in ("train", "val", "test")
    }
    result.decoded.clear()  # the arrays hold the pixels now
    n_train, n_val = len(arrays["train"][1]), len(arrays["val"][1])
    log(
        f"data: {n_train} train / {n_val} val / {len(arrays['test'][1])} test images, {len(class_names)} classes, "
        f"{d.image_size}x{d.image_size}x{d.channels}; model {spec.name}, {t.epochs} epochs, batch {t.batch_size}, "
        f"lr {lr:g} (global batch {pipe.batch_size}), augment {config.augment.preset}, precision {policy}, strategy {strategy_info['name']}"
    )
    from imagerec.data.augment import build_augment

    augment = build_augment(config.augment.preset, seed=t.seed)
    train_ds = shard_by_data(
        _one_hot(
            make_dataset(None, class_names, pipe, True, augment, t.seed, arrays["train"]), len(class_names)
        )
    )
    val_ds = (
        _one_hot(make_dataset(None, class_names, pipe, False, None, t.seed, arrays["val"]), len(class_names))
        if n_val
        else None
    )
    steps = steps_for(n_train, pipe.batch_size)
    with strategy.scope():
        model = build_model(spec.name, d.image_size, d.channels, len(class_names), config.model)
    flops = count_flops(model)
    config_record = {
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "class_names": class_names,
        "num_classes": len(class_names),
        "image_size": d.image_size,
        "channels": d.channels,
        "resize": d.resize,
        "input": {"shape": [d.image_size, d.image_size, d.channels], "dtype": "float32", "range": "0..255"},
        "source": {"data": str(data), "root": str(source.root), "kind": source.kind},
        "data_fingerprint": manifest_hash,
        "seed": t.seed,
        "versions": library_versions(),
        "model": {"name": spec.name, "params": int(model.count_params()), "flops_per_image": flops},
        "precision": policy,
        "strategy": strategy_info,
        "resumed_changes": (previous or {}).get("resumed_changes", []) + changed,
    }
    run.write_json("config.json", config_record)
    backup = AtomicBackupAndRestore(
        run.backup, monitor="val_accuracy" if n_val else "accuracy", history_csv=run.history
    )
    monitor = "val_accuracy" if n_val else "accuracy"
    stopper = StopOnSignal()
    callbacks = [
        stopper,  # raises at batch/epoch boundaries: a half-done epoch never reaches on_epoch_end
        AtomicBestModel(run.model, monitor=monitor, backup=backup),  # before the backup: see its docstring
        backup,
        NaNGuard(t.learning_rate),
        keras.callbacks.CSVLogger(str(run.history), append=bool(previous)),
        keras.callbacks.TensorBoard(str(run.tensorboard), write_graph=False, profile_batch=0),
        progress := ProgressCallback(t.epochs, steps, run.log),
        *worker_callbacks(strategy_info, log),
    ]
    if t.early_stopping:
        callbacks.append(
            keras.callbacks.EarlyStopping(monitor=monitor, patience=t.early_stopping, mode="max")
        )
    weights = _class_weights(arrays["train"][1], len(class_names), t.class_weights)
    backbone = get_backbone_layer(model)
    phase_one = max(1, t.epochs // 3) if backbone is not None and config.model.fine_tune_layers else t.epochs
    fit_t0 = time.perf_counter()
    with strategy.scope():
        if backbone is not None:
            backbone.trainable = False
        compile_model(model, config, steps, phase_one, lr)
    try:
        with stopper.installed():
            _fit_phases(
                model,
                config,
                backbone,
                (phase_one, steps, lr),
                (train_ds, val_ds),
                callbacks,
                weights,
                backup,
                strategy,
            )
            stopper.check()  # a signal during the last epoch's saves: no batch boundary follows
    except KeyboardInterrupt:
        done = _latest_epoch(backup)
        by = " by SIGTERM" if stopper.signum == signal.SIGTERM else ""
        where = (
            f"after its last epoch; all {done} epochs are saved in {str(run.path)!r}; evaluate and finish"
            if done >= t.epochs
            else f"during epoch {done + 1}; epoch {done} is saved in {str(run.path)!r}; continue"
        )
        err = TrainingInterrupted(
            f"training interrupted{by} {where} with: imagerec train {data} --out {run.path} --resume"
        )
        # 130 for Ctrl-C, 143 for SIGTERM, as shells report them
        err.exit_code = 128 + int(stopper.signum or signal.SIGINT)
        raise err from None
    finally:
        progress.close()
    fit_seconds = time.perf_counter() - fit_t0
    if not run.model.exists():
        run.save_model(model)
    best = run.load_model()
    flips = bool(augment_flips(config.augment.preset))
    metrics = {
        "val": _evaluate(best, *arrays["val"], t.batch_size, flips),
        "test": _evaluate(best, *arrays["test"], t.batch_size, flips),
        "epochs_completed": _latest_epoch(backup),
        "fit_seconds": round(fit_seconds, 2),
        "total_seconds": round(time.perf_counter() - t0, 2),
        "images_per_second": round(
            n_train * max(1, _latest_epoch(backup) - (backup.restored_epoch or 0)) / max(fit_seconds, 1e-9), 1
        ),
        "flops_per_image": flops,
    }
    run.write_json("metrics.json", metrics)
    log(
        f"done in {metrics['total_seconds']:.0f}s: val accuracy {metrics['val'].get('accuracy', float('nan')):.4f}, "
        f"test accuracy {metrics['test'].get('accuracy', float('nan')):.4f}"
        + (
            f" ({metrics['test']['accuracy_tta']:.4f} with --tta)"
            if "accuracy_tta" in metrics["test"]
            else ""
        )
        + f"; run saved in {run.path}"
    )
    return Run(run.path, config_record, metrics)


def _fit_phases(model, config, backbone, plan, datasets, callbacks, weights, backup, strategy):
    """Phase one (all layers, or the head over a frozen backbone); phase two: fine-tune the backbone's top."""
    import keras

    t = config.train
    phase_one, steps, lr = plan
    train_ds, val_ds = datasets
    if _latest_epoch(backup) < phase_one:
        model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=phase_one,
            callbacks=callbacks,
            class_weight=weights,
            verbose=0,
        )
    if backbone is not None and phase_one < t.epochs:
        for cb in callbacks:  # phase two's on_train_begin would otherwise reopen history.csv with "w"
            if isinstance(cb, keras.callbacks.CSVLogger):
                cb.append = True
        with strategy.scope():
            _unfreeze_top(backbone, config.model.fine_tune_layers)
            compile_model(model, config, steps, t.epochs - phase_one, lr / 10)
        model.fit(
            train_ds, validation_data=val_ds, epochs=t.epochs, initial_epoch=max(phase_one, _latest_epoch(backup)),
            callbacks=callbacks, class_weight=weights, verbose=0,
        )  # fmt: skip


def _latest_epoch(backup) -> int:
    from imagerec.utils import read_json

    ckpt = backup.latest()
    return int(read_json(ckpt / "meta.json")["epoch"]) if ckpt else 0


def _unfreeze_top(backbone, n: int) -> None:
    """Unfreeze the top ``n`` layers of the backbone; BatchNorm stays frozen (inference mode)."""
    from keras import layers

    backbone.trainable = True
    for i, layer in enumerate(backbone.layers):
        layer.trainable = i >= len(backbone.layers) - n and not isinstance(layer, layers.BatchNormalization)
