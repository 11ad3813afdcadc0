"""Defaults that adapt to the data: every ``None`` in the config is chosen here, printed, and saved."""

from __future__ import annotations

import statistics
from dataclasses import replace

from imagerec.config import RunConfig
from imagerec.data.scan import ScanResult
from imagerec.models.registry import get_model_spec

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
    if n_train >= 20_000:
        return 256
    if n_train >= 2_000:
        return 64
    return max(8, min(32, n_train // 4 or 8))


def choose_epochs(n_train: int, kind: str) -> int:
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
    augment = config.augment
    if augment.preset == "auto":
        from imagerec.data.augment import resolve_preset

        augment = replace(augment, preset=resolve_preset("auto", data.image_size, data.channels))
    return replace(config, data=data, train=train, augment=augment)
