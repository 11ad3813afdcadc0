"""Defaults that adapt to the data: every ``None`` in the config is chosen here, printed, and saved."""

from __future__ import annotations

import statistics
from dataclasses import replace

from imagerec.data.scan import ScanResult
from imagerec.models.registry import get_model_spec
from imagerec.multilabel import resolve_task
from imagerec.settings import RunConfig

GREY_MODES = {"L", "1", "I;16", "I;16B", "I;16L", "I", "LA", "F"}


def choose_channels(result: ScanResult) -> int:
    """Grey data stays grey (1 channel); any colour image makes it 3."""
    return 1 if all(img.mode in GREY_MODES for img in result.images) else 3


def choose_image_size(result: ScanResult, model_name: str) -> int:
    """The median image side, rounded to a multiple of 4, bounded to [16, 160] (backbones: their default)."""
    spec = get_model_spec(model_name)
    if spec.default_size:
        return spec.default_size
    sides = [min(img.width, img.height) for img in result.images]
    median = int(statistics.median(sides)) if sides else 32
    return max(16, min(160, (median + 2) // 4 * 4))


def choose_batch_size(n_train: int) -> int:
    """Large batches amortise the per-step overhead on CPU; small data needs enough steps per epoch."""
    if n_train >= 20_000:
        return 256
    if n_train >= 2_000:
        return 64
    return max(8, min(32, n_train // 4 or 8))


def choose_epochs(n_train: int, kind: str) -> int:
    """Fewer passes for big data, more for less.

    Fashion-MNIST (54k training images), default net: 10 epochs gave 92.8-93.4% test accuracy over five runs,
    12 epochs 93.24% and 93.36%, 14 epochs 93.34% at 1.3x the time of 10 (bench/RESULTS-training.md).
    """
    if kind == "backbone":
        return 10
    if n_train >= 50_000:
        return 12
    if n_train >= 5_000:
        return 20
    return 30


def choose_learning_rate(kind: str, optimizer: str) -> float:
    if optimizer == "sgd":
        return 0.05
    return 1e-3 if kind == "backbone" else 3e-3


def choose_bn_momentum(n_train: int, batch_size: int) -> float:
    """BatchNorm's moving statistics must forget their start (variance 1) within the first epoch.

    The data's variance can be ~1e-4 (imagerec-cnn's last conv on 1/255-scaled pixels: 2.5e-4), so what is left of
    the 1 after one epoch must be below ~1e-6: ``momentum = 1e-6 ** (1 / steps per epoch)``, between 0.9 (few
    steps) and 0.99 (a smoother average where there are many). The old rule (0.99 from 100 steps per epoch) left
    0.99^422 = 1.4% of the 1 after 2 Fashion-MNIST epochs, 58x the data's variance: a near-uniform val loss in
    training's history. The kept model's statistics are recomputed at the end anyway (training/finalize.py).
    """
    steps = max(1, -(-n_train // max(1, batch_size)))
    return round(min(0.99, max(0.9, 1e-6 ** (1 / steps))), 4)


def choose_augment(image_size: int, channels: int, n_train: int, epochs: int) -> str:
    """Large datasets of small images on a short schedule (<= 20 epochs): horizontal flip only.

    With ~12 epochs there is little overfitting to fight, and on Fashion-MNIST random translation cost 1.4
    points of test accuracy (91.4% vs 92.9%, same net and epochs) besides its CPU time in the input pipeline. The
    same on the multi-label fashion-mnist-pairs (27k training images, 20 epochs, still improving at the last):
    macro F1 0.886 with translation, 0.906 without (bench/multilabel.py).
    """
    from imagerec.data.augment import resolve_preset

    if image_size <= 32 and n_train >= 20_000 and epochs <= 20:
        return "hflip"
    return resolve_preset("auto", image_size, channels)


def resolve(config: RunConfig, result: ScanResult, n_train: int) -> RunConfig:
    """Fill every ``None`` of ``config`` from the data; the result is what the run records."""
    spec = get_model_spec(config.model.name)
    data = config.data
    if data.channels is None:
        data = replace(data, channels=choose_channels(result))
    if data.image_size is None:
        data = replace(data, image_size=choose_image_size(result, config.model.name))
    train = config.train
    if train.batch_size is None:
        train = replace(train, batch_size=choose_batch_size(n_train))
    if train.epochs is None:
        train = replace(train, epochs=choose_epochs(n_train, spec.kind))
    if train.learning_rate is None:
        train = replace(train, learning_rate=choose_learning_rate(spec.kind, train.optimizer))
    model = replace(config.model, task=resolve_task(config.model.task, result, config.train.class_weights))
    if model.bn_momentum is None:
        model = replace(model, bn_momentum=choose_bn_momentum(n_train, train.batch_size))
    augment = config.augment
    if augment.preset == "auto":
        augment = replace(
            augment, preset=choose_augment(data.image_size, data.channels, n_train, train.epochs)
        )
    return replace(config, data=data, model=model, train=train, augment=augment)
