"""Every setting and its default, written once: frozen dataclasses, validated one way.

A run's sections (:class:`DataConfig`, :class:`AugmentConfig`, :class:`ModelConfig`, :class:`TrainConfig`, grouped
in :class:`RunConfig` and saved resolved into every run's ``config.json``), the HTTP service (:class:`ServeSettings`)
and a video stream (:class:`VideoConfig`). The CLI reads its option defaults from these classes and never types them
a second time (``tests/cli/test_defaults.py`` holds it to that).

Precedence: defaults < config file < CLI flags. ``None`` means "choose from the data" (see
``imagerec.training.auto``); the resolved value is what the run records.

Every class validates the same way: ``validate()`` runs its checks in order and raises the first that fails;
``replace(**values)`` sets values (``None`` keeps the current one), refuses unknown names with a did-you-mean, and
validates the result.

Example:
    >>> from imagerec.settings import ServeSettings
    >>> ServeSettings().replace(max_batch=32).max_batch
    32
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, Self

from imagerec.errors import ImagerecError, did_you_mean

#: Test images an export is compared on with the Keras model before it is published (``--parity-images``).
PARITY_IMAGES = 1000


def default_of(cls: type, name: str) -> Any:
    """The default of field ``name`` of settings class ``cls`` (where the CLI reads its option defaults).

    Raises:
        ImagerecError: ``cls`` has no field ``name`` (with a did-you-mean).
    """
    by_name = {f.name: f for f in fields(cls)}
    if name not in by_name:
        raise ImagerecError(f"{cls.__name__} has no setting {name!r}{did_you_mean(name, by_name)}")
    f = by_name[name]
    return f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]


def check_names(names: Iterable[str], valid: Iterable[str], what: str, error: type[ImagerecError]) -> None:
    """Raise ``error`` for the first of ``names`` not in ``valid``, with a did-you-mean (else the valid names)."""
    valid = sorted(valid)
    for name in names:
        if name not in valid:
            hint = did_you_mean(name, valid) or f"; expected one of {', '.join(valid)}"
            raise error(f"unknown {what} {name!r}{hint}")


class Settings:
    """What every settings dataclass shares: ``validate`` (the checks, in order) and a checked ``replace``."""

    #: How an unknown name is called in errors ("unknown video setting 'evry'; did you mean 'every'?").
    _what: ClassVar[str] = "setting"

    @classmethod
    def _error(cls) -> type[ImagerecError]:
        return ImagerecError

    def _checks(self) -> Iterator[tuple[bool, str]]:
        """``(ok, message)`` pairs, lazily, in the order they are checked."""
        return iter(())

    def validate(self) -> Self:
        """Return ``self`` when every check passes; raise the first failing check's message otherwise."""
        for ok, message in self._checks():
            if not ok:
                raise self._error()(message)
        return self

    def replace(self, **values: Any) -> Self:
        """A validated copy with ``values`` set (``None`` values keep the current setting)."""
        check_names(values, [f.name for f in fields(self)], self._what, self._error())  # type: ignore[arg-type]
        clean = {k: v for k, v in values.items() if v is not None}
        return dataclasses.replace(self, **clean).validate()  # type: ignore[type-var]

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Self:
        """Build from a dict (a config file's section), refusing unknown keys with a did-you-mean."""
        check_names(raw, [f.name for f in fields(cls)], cls._what, cls._error())  # type: ignore[arg-type]
        return cls(**raw).validate()


# --- a run: data, augmentation, model, training ------------------------------------------------------------------
@dataclass(frozen=True)
class DataConfig(Settings):
    _what: ClassVar[str] = "data key"

    image_size: int | None = None  # square side; None = from the median image size, bounded
    channels: int | None = None  # 1 or 3; None = grey data stays grey
    resize: str = "stretch"  # stretch | pad | crop
    val: float = 0.1
    test: float = 0.1
    cache: str = "auto"  # auto | memory | disk | none
    max_invalid_ratio: float = 0.5
    follow_symlinks: bool = False  # use files that link outside the dataset folder (never for uploads)


@dataclass(frozen=True)
class AugmentConfig(Settings):
    _what: ClassVar[str] = "augment key"

    preset: str = "auto"  # auto | none | light | default | strong (see data/augment.py)


@dataclass(frozen=True)
class ModelConfig(Settings):
    _what: ClassVar[str] = "model key"

    name: str = "imagerec-cnn"
    weights: str = "none"  # none | imagenet | PATH to .weights.h5 (backbones)
    dropout: float = 0.2
    fine_tune_layers: int = 30  # top backbone layers unfrozen in phase two (0 = head only)
    bn_momentum: float | None = None  # None = from the steps per epoch (0.9 for small data, 0.99 otherwise)


@dataclass(frozen=True)
class TrainConfig(Settings):
    _what: ClassVar[str] = "train key"

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


_SECTIONS: dict[str, type[Settings]] = {
    "data": DataConfig,
    "augment": AugmentConfig,
    "model": ModelConfig,
    "train": TrainConfig,
}


@dataclass(frozen=True)
class RunConfig(Settings):
    _what: ClassVar[str] = "config key"

    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunConfig:
        """Build from a dict, raising with a did-you-mean for unknown keys."""
        parts = {name: kind.from_dict(raw.get(name, {}) or {}) for name, kind in _SECTIONS.items()}
        check_names(raw, _SECTIONS, cls._what, cls._error())
        return cls(**parts).validate()  # type: ignore[arg-type]

    def override(self, section: str, **values: Any) -> RunConfig:
        """A copy with ``values`` set in ``section`` (``None`` values are ignored)."""
        return dataclasses.replace(self, **{section: getattr(self, section).replace(**values)})


# --- the HTTP service -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ServeSettings(Settings):
    """Settings of ``imagerec serve`` and ``create_app``; most are a flag of that name (``--max-batch``)."""

    _what: ClassVar[str] = "serve setting"

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = field(default=None, repr=False)
    workers: int = 1
    max_batch: int = 64
    max_wait_ms: float = 5.0
    max_queue: int = 512
    max_upload_mb: float = 10.0
    max_files: int = 16
    timeout_s: float = 30.0
    decode_threads: int = 2
    max_sessions: int = 256
    cors_origins: tuple[str, ...] = ()
    cors_credentials: bool = False
    rate_limit: float = 0.0  # requests per second per API key (or client IP); 0 = off
    decode_workers: int = 1  # decode processes (a crashing decoder costs one request); 0 = decode in-thread
    threshold: float | None = None  # 'unknown' below it; None = the run's calibrated threshold; 0 = off
    stall_s: float = 0.0  # abandon a model call (replace its worker) after this; 0 = 2 x timeout_s
    max_stalled: int = 4  # abandoned workers still stuck at once before /readyz answers 503

    def _checks(self) -> Iterator[tuple[bool, str]]:
        yield self.max_batch >= 1, f"--max-batch must be >= 1, got {self.max_batch}"
        yield self.max_wait_ms >= 0, f"--max-wait-ms must be >= 0, got {self.max_wait_ms}"
        yield self.max_queue >= 1, f"--max-queue must be >= 1, got {self.max_queue}"
        yield self.max_upload_mb > 0, f"--max-upload-mb must be > 0, got {self.max_upload_mb}"
        yield self.max_files >= 1, f"--max-files must be >= 1, got {self.max_files}"
        yield self.timeout_s > 0, f"--timeout-s must be > 0, got {self.timeout_s}"
        yield self.workers >= 1, f"--workers must be >= 1, got {self.workers}"
        yield self.decode_threads >= 1, f"decode_threads must be >= 1, got {self.decode_threads}"
        yield self.rate_limit >= 0, f"--rate-limit must be >= 0 (0 = off), got {self.rate_limit}"
        yield self.stall_s >= 0, f"stall_s must be >= 0 (0 = 2 x timeout_s), got {self.stall_s}"
        yield self.max_stalled >= 1, f"max_stalled must be >= 1, got {self.max_stalled}"
        yield (
            self.decode_workers >= 0,
            f"--decode-workers must be >= 0 (0 = in-thread), got {self.decode_workers}",
        )
        yield (
            self.threshold is None or 0.0 <= self.threshold <= 1.0,
            f"--threshold must be in [0, 1] (0 = never 'unknown'), got {self.threshold}",
        )
        yield (
            not ("*" in self.cors_origins and self.cors_credentials),
            "--cors-origin '*' cannot be combined with --cors-allow-credentials (any site could call the API "
            "as the user); list the allowed origins explicitly",
        )

    @property
    def max_body(self) -> int:
        """The largest request body in bytes (``max_upload_mb``)."""
        return int(self.max_upload_mb * 2**20)


# --- a video stream -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VideoConfig(Settings):
    """Settings of one stream (the CLI flags of ``imagerec video``, the keywords of ``Classifier.stream``).

    Attributes:
        every: classify every N-th frame (the others carry the last label). Exclusive with ``fps``.
        fps: classify at most F frames per second of video time (0 = every frame).
        smooth: EMA factor in [0, 1): 0 = off; higher = steadier, slower to react.
        roi: ``(x, y, w, h)`` region classified (the whole frame when None).
        threshold: answer ``unknown`` below this confidence (None = the run's calibrated threshold; 0 = off).
        top_k: ``(label, score)`` pairs per result.
        batch_size: most frames per model call.
        open_timeout_s / read_timeout_s: a source that opens or sends no frame within this raises VideoError (a
            live source's capture process still silent 1 s later, e.g. stuck inside FFmpeg, is killed).
        reconnects: consecutive attempts to reopen a live stream that drops (back-off 0.5 s, 1 s, 2 s, ... up to
            8 s; the count restarts once a frame arrives).
        live: treat the source as live (keep only the newest frame); None = cameras and URLs are live.
        keep_images: attach the BGR frame to each result (needed to draw or write video).
    """

    _what: ClassVar[str] = "video setting"

    every: int = 1
    fps: float = 0.0
    smooth: float = 0.6
    roi: tuple[int, int, int, int] | None = None
    threshold: float | None = None
    top_k: int = 3
    batch_size: int = 16
    open_timeout_s: float = 10.0
    read_timeout_s: float = 10.0
    reconnects: int = 5
    live: bool | None = None
    keep_images: bool = True

    @classmethod
    def _error(cls) -> type[ImagerecError]:
        from imagerec.video.sources import VideoError

        return VideoError

    def _checks(self) -> Iterator[tuple[bool, str]]:
        yield self.every >= 1, f"every must be >= 1, got {self.every}"
        yield self.fps >= 0, f"fps must be >= 0 (0 = every frame), got {self.fps}"
        yield not (self.every > 1 and self.fps > 0), "give either every (--every) or fps (--fps), not both"
        yield (
            0.0 <= self.smooth < 1.0,
            f"smooth must be in [0, 1) (0 = off, {default_of(VideoConfig, 'smooth')} = default), got {self.smooth}",
        )
        roi = self.roi
        yield (
            roi is None or (len(roi) == 4 and min(roi[2:]) > 0 and min(roi[:2]) >= 0),
            f"roi must be x,y,w,h with x,y >= 0 and w,h > 0, got {roi}",
        )
        yield (
            self.threshold is None or 0.0 <= self.threshold <= 1.0,
            f"threshold must be in [0, 1], got {self.threshold}",
        )
        yield (
            self.top_k >= 1 and self.batch_size >= 1 and self.reconnects >= 0,
            "top_k and batch_size must be >= 1 and reconnects >= 0",
        )
        yield (
            self.open_timeout_s > 0 and self.read_timeout_s > 0,
            "open_timeout_s and read_timeout_s must be > 0 seconds",
        )

    @classmethod
    def from_overrides(cls, base: VideoConfig | None = None, **overrides: Any) -> VideoConfig:
        """``base`` (default settings when None) with ``overrides`` set, validated (see :meth:`replace`)."""
        return (base or cls()).replace(**overrides)
