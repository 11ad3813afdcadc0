"""Typed configuration: frozen dataclasses, validated once, saved resolved into every run's ``config.json``.

Precedence: defaults < config file < CLI flags. ``None`` means "choose from the data" (see
``imagerec.training.auto``); the resolved value is what the run records.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from imagerec.errors import ImagerecError


@dataclass(frozen=True)
class DataConfig:
    image_size: int | None = None  # square side; None = from the median image size, bounded
    channels: int | None = None  # 1 or 3; None = grey data stays grey
    resize: str = "stretch"  # stretch | pad | crop
    val: float = 0.1
    test: float = 0.1
    cache: str = "auto"  # auto | memory | disk | none
    max_invalid_ratio: float = 0.5


@dataclass(frozen=True)
class AugmentConfig:
    preset: str = "auto"  # auto | none | light | default | strong (see data/augment.py)


@dataclass(frozen=True)
class ModelConfig:
    name: str = "imagerec-cnn"
    weights: str = "none"  # none | imagenet | PATH to .weights.h5 (backbones)
    dropout: float = 0.2
    fine_tune_layers: int = 30  # top backbone layers unfrozen in phase two (0 = head only)
    bn_momentum: float | None = None  # None = from the steps per epoch (0.9 for small data, 0.99 otherwise)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    optimizer: str = "adamw"  # adamw | sgd
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    schedule: str = "cosine"  # cosine (with linear warm-up) | onecycle | constant
    warmup_epochs: float = 1.0
    class_weights: str = "none"  # none | auto
    early_stopping: int = 0  # patience in epochs; 0 = off
    seed: int = 42
    mixed_precision: str = "auto"  # auto (bf16 where the hardware has it) | off | bf16
    strategy: str = "auto"  # auto | default | mirrored | multiworker
    deterministic: bool = False


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunConfig:
        """Build from a dict, raising with a did-you-mean for unknown keys."""
        parts = {}
        for f in fields(cls):
            sub = raw.get(f.name, {}) or {}
            parts[f.name] = _build(f.type if isinstance(f.type, type) else _SECTIONS[f.name], sub, f.name)
        unknown = set(raw) - {f.name for f in fields(cls)}
        if unknown:
            raise ImagerecError(_unknown_message(sorted(unknown)[0], [f.name for f in fields(cls)], "config"))
        return cls(**parts)

    def override(self, section: str, **values: Any) -> RunConfig:
        """A copy with ``values`` set in ``section`` (``None`` values are ignored)."""
        current = getattr(self, section)
        clean = {k: v for k, v in values.items() if v is not None}
        names = {f.name for f in fields(current)}
        for key in clean:
            if key not in names:
                raise ImagerecError(_unknown_message(key, sorted(names), section))
        return replace(self, **{section: replace(current, **clean)})


_SECTIONS = {"data": DataConfig, "augment": AugmentConfig, "model": ModelConfig, "train": TrainConfig}


def _unknown_message(key: str, valid: list[str], where: str) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; expected one of {', '.join(valid)}"
    return f"unknown {where} key {key!r}{hint}"


def _build(kind: type, raw: dict[str, Any], where: str) -> Any:
    names = {f.name for f in fields(kind)}
    for key in raw:
        if key not in names:
            raise ImagerecError(_unknown_message(key, sorted(names), where))
    return kind(**raw)
