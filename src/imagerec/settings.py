"""Every setting and its default, written once: frozen dataclasses, validated one way.

A run's sections (:class:`DataConfig`, :class:`AugmentConfig`, :class:`ModelConfig`, :class:`TrainConfig`, grouped
in :class:`RunConfig` and saved resolved into every run's ``config.json``), the HTTP service (:class:`ServeSettings`)
and a video stream (:class:`VideoConfig`). The CLI reads its option defaults from these classes and never types them
a second time (``tests/cli/test_defaults.py`` holds it to that).

Precedence: defaults < config file < CLI flags. ``None`` means "choose from the data" (see
``imagerec.training.auto``); the resolved value is what the run records.

The verbs have theirs too (:class:`EvaluateSettings`, :class:`CalibrateSettings`, :class:`IssuesSettings`,
:class:`PredictSettings`, :class:`LRFindSettings`, :class:`BenchmarkSettings`, :class:`RaySettings`): the library
functions take their keyword defaults from these classes (``top_k: int = EvaluateSettings.top_k``) and the CLI
its option defaults, so each default is written here and nowhere else.

Every class validates the same way: ``validate()`` checks each numeric field against its ``Bound`` (declared
once, with the field: ``epochs: int | None = integer(None, ge=1)``), then the class's rules across fields, and
raises the first that fails ("--epochs must be >= 1, got 0"); ``replace(**values)`` sets values (``None`` keeps the
current one), refuses unknown names with a did-you-mean, and validates the result.

Example:
    >>> from imagerec.settings import ServeSettings
    >>> ServeSettings().replace(max_batch=32).max_batch
    32
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

# the machinery every class below shares lives in bounds.py (re-exported here: ``imagerec.settings.default_of``)
from imagerec.bounds import Settings, check_names, default_of, integer, number  # noqa: F401
from imagerec.errors import ImagerecError

#: Test images an export is compared on with the Keras model before it is published (``--parity-images``).
PARITY_IMAGES = 1000

#: The runtime a run is loaded with (``Classifier.load``; ``--runtime`` of predict, video and serve): the fastest
#: of Keras and the exports that answer like it (``auto-quantized`` allows quantized ones). A plain constant: it is one word shared by three verbs, no group.
RUNTIME = "auto"

#: The export format of ``imagerec export`` and ``Classifier.export``.
EXPORT_FORMAT = "tflite"


#: An 'unknown' threshold (predict, serve, video): a confidence.
THRESHOLD = {"ge": 0, "le": 1, "note": "0 = never 'unknown'"}


# --- a run: data, augmentation, model, training ------------------------------------------------------------------
@dataclass(frozen=True)
class DataConfig(Settings):
    _what: ClassVar[str] = "data key"

    image_size: int | None = integer(None, ge=8, le=4096)  # square side; None = from the median image size
    channels: int | None = integer(None, choices=(1, 3))  # None = grey data stays grey
    resize: str = "stretch"  # stretch | pad | crop
    val: float = number(0.1, ge=0, lt=1)
    test: float = number(0.1, ge=0, lt=1)
    cache: str = "auto"  # auto | memory | disk | none
    max_invalid_ratio: float = number(0.5, ge=0, le=1, flag=False)
    follow_symlinks: bool = False  # use files that link outside the dataset folder (never for uploads)

    def _rules(self) -> Iterator[tuple[bool, str]]:
        yield (
            self.val + self.test < 1,
            f"--val + --test must be < 1 (the rest is the training data), got {self.val} + {self.test}",
        )


@dataclass(frozen=True)
class AugmentConfig(Settings):
    _what: ClassVar[str] = "augment key"

    preset: str = "auto"  # auto | none | light | default | strong (see data/augment.py)


@dataclass(frozen=True)
class ModelConfig(Settings):
    _what: ClassVar[str] = "model key"

    name: str = "imagerec-cnn"
    weights: str = "none"  # none | imagenet | PATH to .weights.h5 (backbones)
    dropout: float = number(0.2, ge=0, lt=1, flag=False)
    fine_tune_layers: int = integer(
        30, ge=0, flag=False
    )  # top backbone layers unfrozen in phase two (0 = head only)
    bn_momentum: float | None = number(None, gt=0, lt=1, flag=False)  # None = from the steps per epoch
    task: str = "auto"  # auto (multilabel for a path,labels CSV) | multiclass | multilabel (sigmoid head)


@dataclass(frozen=True)
class TrainConfig(Settings):
    _what: ClassVar[str] = "train key"

    epochs: int | None = integer(None, ge=1)
    batch_size: int | None = integer(None, ge=1)
    learning_rate: float | None = number(None, gt=0, flag="--lr")
    optimizer: str = "adamw"  # adamw | sgd
    weight_decay: float = number(5e-4, ge=0)
    label_smoothing: float = number(0.1, ge=0, lt=1)
    schedule: str = "cosine"  # cosine (with linear warm-up) | onecycle | constant
    warmup_epochs: float = number(1.0, ge=0, flag=False)
    class_weights: str = "none"  # none | auto
    early_stopping: int = integer(0, ge=0, note="patience in epochs; 0 = off")
    seed: int = integer(42, ge=0, le=2**32 - 1)  # NumPy's seed range
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

    def validate(self) -> RunConfig:
        """Validate every section, then the whole."""
        for name in _SECTIONS:
            getattr(self, name).validate()
        return super().validate()

    def override(self, section: str, **values: Any) -> RunConfig:
        """A copy with ``values`` set in ``section`` (``None`` values are ignored)."""
        return dataclasses.replace(self, **{section: getattr(self, section).replace(**values)})


# --- the HTTP service, and recording answers (serve --record, video --record) ---------------------------------------
#: ``--record-images``: which pictures a recording keeps beside its records.
RECORD_IMAGES = ("review", "none")


@dataclass(frozen=True)
class RecordSettings(Settings):
    """What ``--record DIR`` keeps (``imagerec.monitoring.records``): one record per answer, pictures only of the
    answers worth reviewing, under caps on count, bytes and age (the oldest go first)."""

    _what: ClassVar[str] = "record setting"

    # 'review': the pictures of unknown / low-confidence / out-of-distribution answers + a random sample; 'none'
    images: str = "review"
    sample: float = number(0.01, ge=0, le=1, flag=False)  # share of the other answers whose picture is kept
    low_confidence: float = number(0.5, ge=0, le=1, flag=False)  # a picture is kept below this confidence
    max_images: int = integer(10_000, ge=0, flag=False)
    max_mb: float = number(1024.0, gt=0, flag=False)  # records + pictures together
    max_age_days: float = number(30.0, gt=0, flag=False)
    rotate_mb: float = number(16.0, gt=0, flag=False)  # a record file is closed and a new one started past this
    flush_s: float = number(0.5, gt=0, le=1, flag=False)  # records reach the OS within this (a SIGKILL loses less)

    def _rules(self) -> Iterator[tuple[bool, str]]:
        yield (
            self.images in RECORD_IMAGES,
            f"--record-images must be one of {', '.join(RECORD_IMAGES)}, got {self.images!r}",
        )


@dataclass(frozen=True)
class ReviewSettings(Settings):
    """``imagerec review DIR --out QUEUE``: how many pictures to queue (``imagerec.monitoring.review``)."""
    _what: ClassVar[str] = "review setting"

    size: int = integer(200, ge=1)
    near_duplicate: float = number(0.01, ge=0, le=2, flag=False)  # cosine distance under which a pick is a duplicate
    strata: int = integer(20, ge=1, flag=False)  # k-means clusters the queue is shared among, by size


@dataclass(frozen=True)
class DriftSettings(Settings):
    """Drift gauges (imagerec.monitoring.drift): the last ``window`` answers vs validation (bench/drift.py)."""

    _what: ClassVar[str] = "drift setting"
    window: int = integer(500, ge=0, flag="--window")  # the last answers watched (serve --drift-window)
    confidence_psi: float = number(0.2, gt=0, flag=False)  # population stability index of confidence
    unknown_share: float = number(0.10, gt=0, le=1, flag=False)  # share of 'unknown' answers above val's
    ood_share: float = number(0.10, gt=0, le=1, flag=False)  # share of OOD-scored answers above val's
    class_shift: float = number(0.15, gt=0, le=1, flag=False)  # total variation of predicted-class shares
    embedding_distance: float = number(1.5, gt=1, flag=False)  # mean OOD score / val's mean


@dataclass(frozen=True)
class ServeSettings(Settings):
    """Settings of ``imagerec serve`` and ``create_app``; most are a flag of that name (``--max-batch``)."""

    _what: ClassVar[str] = "serve setting"

    host: str = "127.0.0.1"
    port: int = integer(8000, ge=1, le=65535)  # 0 (any free port) is refused: the URL printed would be wrong
    api_key: str | None = field(default=None, repr=False)
    workers: int = integer(1, ge=1)
    max_batch: int = integer(64, ge=1)
    max_wait_ms: float = number(0.0, ge=0)  # first image's wait for company; 0 = none (Triton's default)
    max_queue: int = integer(512, ge=1)
    max_upload_mb: float = number(10.0, gt=0)
    max_files: int = integer(16, ge=1)
    timeout_s: float = number(30.0, gt=0)
    decode_threads: int = integer(2, ge=1, flag=False)
    max_sessions: int = integer(256, ge=1, flag=False)
    cors_origins: tuple[str, ...] = ()
    cors_credentials: bool = False
    # requests per second per API key (or client IP)
    rate_limit: float = number(0.0, ge=0, note="0 = off")
    # decode processes (a crashing decoder costs one request; tiny plain PNGs: in-process)
    decode_workers: int = integer(1, ge=0, note="0 = in-thread")
    # 'unknown' below it; None = the run's calibrated threshold
    threshold: float | None = number(None, **THRESHOLD)
    # abandon a model call (replace its worker) after this
    stall_s: float = number(0.0, ge=0, note="0 = 2 x timeout_s")
    # abandoned workers still stuck at once before /readyz answers 503
    max_stalled: int = integer(4, ge=1)
    # --models DIR: seconds between looks at DIR for a new version (and the admin reload's wanted-version file)
    watch_s: float = number(5.0, ge=0, note="0 = off")
    # --record DIR: one record per answer (+ the pictures worth reviewing); None = nothing recorded
    record: str | None = None
    record_images: str = RecordSettings.images
    drift_window: int = integer(DriftSettings.window, ge=0, note="0 = no drift gauges")  # monitoring/drift
    review: str | None = None  # --review QUEUE: the Review tab and /v1/review/* (None = off: 404)
    review_out: str | None = None  # --review-out DATASET: where labels land (class folders, or a .csv multi-label)

    def _rules(self) -> Iterator[tuple[bool, str]]:
        yield (
            not ("*" in self.cors_origins and self.cors_credentials),
            "--cors-origin '*' cannot be combined with --cors-allow-credentials (any site could call the API "
            "as the user); list the allowed origins explicitly",
        )
        yield from RecordSettings(images=self.record_images)._rules()  # --record-images, before a load

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
        embeddings: each classified result's ``scores`` carry the frame's embedding too (``video --record``).
    """

    _what: ClassVar[str] = "video setting"

    every: int = integer(1, ge=1)
    fps: float = number(0.0, ge=0, note="0 = every frame")
    smooth: float = number(0.6, ge=0, lt=1, note="0 = off, {default} = default")
    roi: tuple[int, int, int, int] | None = None
    threshold: float | None = number(None, **THRESHOLD)
    top_k: int = integer(3, ge=1)
    batch_size: int = integer(16, ge=1)
    open_timeout_s: float = number(10.0, gt=0)
    read_timeout_s: float = number(10.0, gt=0)
    reconnects: int = integer(5, ge=0, flag=False)
    live: bool | None = None
    keep_images: bool = True
    embeddings: bool = False

    @classmethod
    def _error(cls) -> type[ImagerecError]:
        from imagerec.video.sources import VideoError

        return VideoError

    def _rules(self) -> Iterator[tuple[bool, str]]:
        yield not (self.every > 1 and self.fps > 0), "give either every (--every) or fps (--fps), not both"
        roi = self.roi
        ok = roi is None or (len(roi) == 4 and min(roi[2:]) > 0 and min(roi[:2]) >= 0)
        yield ok, f"roi must be x,y,w,h with x,y >= 0 and w,h > 0, got {roi}"

    @classmethod
    def from_overrides(cls, base: VideoConfig | None = None, **overrides: Any) -> VideoConfig:
        """``base`` (default settings when None) with ``overrides`` set, validated (see :meth:`replace`)."""
        return (base or cls()).replace(**overrides)


# --- the verbs: evaluate, calibrate, label issues, predict, lr-find, benchmark, Ray ---------------------------------
@dataclass(frozen=True)
class EvaluateSettings(Settings):
    """``imagerec evaluate`` / ``Classifier.evaluate``; ``split`` is also the one ``imagerec compare`` compares on."""

    _what: ClassVar[str] = "evaluate setting"
    split: str = "test"  # test | val | train: a part of the run's manifest
    top_k: int = integer(5, ge=1)  # k of the top-k accuracy
    gate_tolerance: float = number(0.01, flag="--tolerance", ge=0, lt=1)  # compare --gate: NEW below OLD by


@dataclass(frozen=True)
class CalibrateSettings(Settings):
    """``imagerec calibrate`` / ``Classifier.calibrate``: temperature scaling and an 'unknown' threshold."""

    _what: ClassVar[str] = "calibrate setting"

    target_accuracy: float | None = number(0.95, gt=0, le=1)  # None: store no threshold (--no-threshold)
    split: str = "val"
    # the share of in-distribution (validation) images the out-of-distribution threshold keeps (its TPR)
    ood_keep: float | None = number(0.95, gt=0, lt=1)  # None: store no OOD threshold


@dataclass(frozen=True)
class IssuesSettings(Settings):
    """``imagerec data issues`` / ``Classifier.label_issues``: the likeliest mislabelled images. ``limit``: a list a
    person reviews in one sitting; ``limit=None`` (``--limit 0``) for every flagged image."""

    _what: ClassVar[str] = "label issues setting"

    splits: tuple[str, ...] = ("train", "val")
    limit: int | None = integer(30, ge=0, note="0 = all")
    max_p_given: float = number(0.5, gt=0, le=1, flag="--max-p")  # flag images whose p(given label) is below


@dataclass(frozen=True)
class PredictSettings(Settings):
    """``imagerec predict`` / ``Classifier.predict`` (and ``predict --ray``)."""

    _what: ClassVar[str] = "predict setting"

    top_k: int = integer(3, ge=1)  # (label, score) pairs per image
    batch_size: int = integer(64, ge=1)  # images per model call
    threshold: float | None = number(None, **THRESHOLD)  # None = the run's calibrated threshold


@dataclass(frozen=True)
class LRFindSettings(Settings):
    """``imagerec lr-find`` / ``imagerec.training.lr_find``: the learning-rate range test."""

    _what: ClassVar[str] = "lr-find setting"

    plot: str = "lr_find.png"
    steps: int = integer(100, ge=5)
    start_lr: float = number(1e-7, gt=0)
    end_lr: float = number(10.0, gt=0)

    def _rules(self) -> Iterator[tuple[bool, str]]:
        yield self.start_lr < self.end_lr, f"--start-lr must be < --end-lr, got {self.start_lr} >= {self.end_lr}"


@dataclass(frozen=True)
class BenchmarkSettings(Settings):
    """``imagerec benchmark`` / ``imagerec.export.benchmark.benchmark_run``."""

    _what: ClassVar[str] = "benchmark setting"

    rounds: int = integer(5, ge=1)  # interleaved rounds; figures are medians over rounds


@dataclass(frozen=True)
class RaySettings(Settings):
    """``train --ray`` / ``predict --ray`` / ``serve --ray``: the Ray cluster, its workers, Ray Serve's replicas."""

    _what: ClassVar[str] = "Ray setting"

    num_workers: int = integer(2, ge=1)
    address: str | None = None  # host:port or ray://host:10001; None = a local instance
    replicas: int = integer(1, ge=1)
    autoscale: tuple[int, ...] = ()  # serve: (MIN, MAX) replicas scaled on requests in flight; () = fixed replicas
    replica_cpus: float = number(1.0, gt=0)  # serve: Ray CPUs each replica reserves (its model threads)

    def _rules(self) -> Iterator[tuple[bool, str]]:
        lo, hi = (*self.autoscale, 0, 0)[:2]
        ok = not self.autoscale or (len(self.autoscale) == 2 and 0 <= lo <= hi and hi >= 1)
        yield ok, f"--autoscale takes MIN,MAX with 0 <= MIN <= MAX and MAX >= 1, got {self.autoscale}"

