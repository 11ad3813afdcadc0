"""Drift: the last answers of a served model compared with its answers on the run's validation split.

A deployed model's inputs change (new products, cameras, lighting) without anyone telling it; its answers change
with them. Five statistics of a sliding window of answers are compared with the same statistics of the run's
validation answers, the *baseline* (``RUN/drift.json``, :class:`Baseline`):

==========================  ==================================================================================
``confidence_psi``          population stability index of the top-class confidence (val's deciles as bins)
``unknown_share``           share of ``unknown`` answers (low confidence, out of distribution, an empty label set)
``ood_share``               share of answers whose OOD score is above the run's OOD threshold (val's 95th
                            percentile when none was calibrated)
``class_shift``             total variation distance between predicted-class shares (top class) and val's
``embedding_distance``      mean OOD score (Mahalanobis distance of the embedding to its nearest class mean) /
                            val's mean: 1 = as far from the training data as validation images are
==========================  ==================================================================================

The alarm is up while any of them is past its threshold (:class:`imagerec.settings.DriftSettings`) with the window
at least half full. A share's threshold is val's share plus a margin, and never closer to val's
value than 4 standard errors of a window that size (a run whose val answers 'unknown' 30% of the time gets a wider
margin); the class shift's threshold is never under 3x the total variation sampling alone gives (many classes,
small windows). Why the OOD score stands for "mean embedding distance": it is already computed for every answer,
needs no embedding columns on the request path, and is measured against the class means, so a shift along a
direction the classes do not use still shows.

Example:
    >>> monitor = DriftMonitor(Baseline.load(RunDir("runs/fmnist").drift_baseline), DriftSettings())
    >>> monitor.add(classifier.answers(scores))
    >>> monitor.snapshot()["alarm"]
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from imagerec.errors import ImagerecError
from imagerec.prediction import UNKNOWN
from imagerec.settings import DriftSettings

log = logging.getLogger("imagerec.monitoring")

GAUGES = ("confidence_psi", "unknown_share", "ood_share", "class_shift", "embedding_distance")
FORMAT = 1
CONFIDENCE_BINS = 10
#: the OOD limit when the run has no calibrated OOD threshold: val's 95th percentile
OOD_QUANTILE = 0.95
BATCH = 256
#: answers between two evaluations of the alarm (and its log lines) between scrapes
CHECK_EVERY = 100


@dataclass(frozen=True)
class Baseline:
    """The validation answers' statistics (see the module docstring); ``RUN/drift.json``."""

    labels: list[str]
    confidence_edges: list[float]  # the inner edges of the confidence bins (val's deciles, deduplicated)
    confidence_shares: list[float]
    class_shares: list[float]
    unknown_share: float
    ood_limit: float | None  # an answer above it counts as out of distribution (None: the run has no scores)
    ood_share: float | None
    ood_mean: float | None
    ood_quantiles: dict[str, float] | None
    threshold: float | None  # the confidence threshold the answers were labelled with
    ood_threshold: float | None  # the run's OOD threshold they were labelled with
    model_version: str | None
    num_images: int
    format: int = FORMAT

    @classmethod
    def fit(
        cls, labels: list[str], stats: AnswerStats, threshold: float | None, ood_threshold: float | None,
        model_version: str | None = None,
    ) -> Baseline:  # fmt: skip
        """The baseline of ``stats`` (:func:`answer_stats` of the val answers).

        Raises:
            ImagerecError: ``stats`` is empty.
        """
        n = len(stats.confidence)
        if n == 0:
            raise ImagerecError("a drift baseline needs validation answers; the validation split is empty")
        quantiles = np.quantile(stats.confidence, np.linspace(0, 1, CONFIDENCE_BINS + 1)[1:-1])
        edges = np.unique(quantiles)
        bins = np.bincount(np.searchsorted(edges, stats.confidence, side="right"), minlength=len(edges) + 1)
        classes = np.bincount(stats.top_class, minlength=len(labels))[: len(labels)]
        ood = stats.ood[np.isfinite(stats.ood)]
        limit = ood_threshold
        if limit is None and len(ood):
            limit = float(np.quantile(ood, OOD_QUANTILE))
        return cls(
            labels=list(labels),
            confidence_edges=[float(e) for e in edges],
            confidence_shares=_rounded(bins / n),
            class_shares=_rounded(classes / n),
            unknown_share=float(stats.unknown.mean()),
            ood_limit=None if limit is None or not len(ood) else float(limit),
            ood_share=float((ood > limit).mean()) if len(ood) and limit is not None else None,
            ood_mean=float(ood.mean()) if len(ood) else None,
            ood_quantiles=(
                {f"p{q}": float(np.quantile(ood, q / 100)) for q in (5, 25, 50, 75, 95, 99)}
                if len(ood)
                else None
            ),
            threshold=threshold,
            ood_threshold=ood_threshold,
            model_version=model_version,
            num_images=int(n),
        )

    def matches(self, labels: list[str], threshold: float | None, ood_threshold: float | None,
                model_version: str | None) -> bool:  # fmt: skip
        """Whether this baseline describes a model answering with these labels and thresholds."""
        return (
            self.format == FORMAT
            and self.labels == list(labels)
            and _same(self.threshold, threshold)
            and _same(self.ood_threshold, ood_threshold)
            and (model_version is None or self.model_version in (None, model_version))
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | os.PathLike) -> None:
        from imagerec.utils import atomic_write_json

        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Baseline:
        """Read a ``drift.json``.

        Raises:
            ImagerecError: the file is unreadable or not a drift baseline.
        """
        from imagerec.utils import read_json

        try:
            raw = read_json(path)
            return cls(**raw)
        except (OSError, ValueError, TypeError) as exc:
            raise ImagerecError(
                f"{path}: not a drift baseline ({exc}); rebuild it with 'imagerec calibrate RUN'"
            ) from None


def _rounded(values: np.ndarray) -> list[float]:
    return [round(float(v), 6) for v in values]


def _same(a: float | None, b: float | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and math.isclose(a, b, rel_tol=1e-6))


@dataclass(frozen=True)
class AnswerStats:
    """Per answer: top-class confidence, top-class index, unknown or not, OOD score (NaN: none)."""

    confidence: np.ndarray
    top_class: np.ndarray
    unknown: np.ndarray
    ood: np.ndarray


def answer_stats(answers: Iterable[Any], labels: list[str]) -> AnswerStats:
    """:class:`AnswerStats` of :class:`imagerec.prediction.Prediction` s or recorded answers (dicts with ``label``,
    ``confidence``, ``top_k``, ``ood_score``): the top class is ``top_k``'s first, even for an unknown answer."""
    index = {name: i for i, name in enumerate(labels)}
    conf, top, unknown, ood = [], [], [], []
    for a in answers:
        get = a.get if isinstance(a, dict) else (lambda name, _a=a: getattr(_a, name))
        first = get("top_k")[0][0] if get("top_k") else get("label")
        score = get("ood_score")
        conf.append(float(get("confidence")))
        top.append(index.get(first, len(labels)))  # a class the baseline lacks counts as a class of its own
        unknown.append(get("label") == UNKNOWN)
        ood.append(np.nan if score is None else float(score))
    return AnswerStats(
        np.asarray(conf, np.float64),
        np.asarray(top, np.int64),
        np.asarray(unknown, bool),
        np.asarray(ood, np.float64),
    )


def build_baseline(clf, images: np.ndarray, threshold: float | None = None) -> Baseline:
    """The baseline of ``clf``'s answers to ``images`` (the run's validation images), labelled as a server with
    ``--threshold threshold`` labels them (None: the run's calibrated threshold)."""
    from imagerec.runtime import predict_in_batches

    scores = predict_in_batches(clf.predict_scores, images, BATCH)
    answers = clf.answers(scores, 1, threshold)
    limit = clf.threshold_for(threshold)
    ood_threshold = clf.ood_threshold if threshold != 0 else None
    return Baseline.fit(clf.labels, answer_stats(answers, clf.labels), limit, ood_threshold, clf.version)


def write_baseline(clf, images: np.ndarray) -> Baseline:
    """Build the run's baseline from its validation ``images`` and save it as ``RUN/drift.json``."""
    baseline = build_baseline(clf, images)
    baseline.save(clf.run_dir.drift_baseline)
    return baseline


# --- the statistics of a window of answers ---------------------------------------------------------------------------
def gauges_of(baseline: Baseline, stats: AnswerStats) -> dict[str, float | None]:
    """The five drift statistics of the answers ``stats`` against ``baseline`` (None: not measurable here)."""
    n = len(stats.confidence)
    out: dict[str, float | None] = dict.fromkeys(GAUGES)
    if n == 0:
        return out
    edges = np.asarray(baseline.confidence_edges)
    bins = np.bincount(np.searchsorted(edges, stats.confidence, side="right"), minlength=len(edges) + 1)
    out["confidence_psi"] = psi(np.asarray(baseline.confidence_shares), baseline.num_images, bins)
    out["unknown_share"] = float(stats.unknown.mean())
    k = len(baseline.labels)
    live = np.bincount(stats.top_class, minlength=k + 1)[: k + 1] / n
    out["class_shift"] = float(0.5 * np.abs(live - np.append(baseline.class_shares, 0.0)).sum())
    ood = stats.ood[np.isfinite(stats.ood)]
    if len(ood) and baseline.ood_limit is not None:
        out["ood_share"] = float((ood > baseline.ood_limit).mean())
    if len(ood) and baseline.ood_mean:
        out["embedding_distance"] = float(ood.mean() / baseline.ood_mean)
    return out


def psi(expected: np.ndarray, expected_n: int, counts: np.ndarray) -> float:
    """Population stability index of ``counts`` against shares ``expected`` (of ``expected_n`` answers); both
    smoothed by half an answer per bin, so an empty bin is large, not infinite."""
    b = len(counts)
    p = (expected * expected_n + 0.5) / (expected_n + 0.5 * b)
    q = (counts + 0.5) / (counts.sum() + 0.5 * b)
    return float(np.sum((q - p) * np.log(q / p)))


def thresholds_of(baseline: Baseline, settings: DriftSettings, n: int) -> dict[str, float | None]:
    """Each gauge's alarm threshold for a window of ``n`` answers (see the module docstring)."""
    n = max(n, 1)

    def share(base: float | None, margin: float) -> float | None:
        if base is None:
            return None
        return base + max(margin, 4 * math.sqrt(max(base * (1 - base), 1 / n) / n))

    p = np.asarray(baseline.class_shares)
    null_tv = 0.5 * float(np.sum(np.sqrt(2 * p * (1 - p) / (math.pi * n))))
    return {
        "confidence_psi": settings.confidence_psi,
        "unknown_share": share(baseline.unknown_share, settings.unknown_share),
        "ood_share": share(baseline.ood_share, settings.ood_share),
        "class_shift": max(settings.class_shift, 3 * null_tv),
        "embedding_distance": settings.embedding_distance if baseline.ood_mean else None,
    }


def past(gauges: dict[str, float | None], thresholds: dict[str, float | None]) -> list[str]:
    """The gauges above their thresholds."""
    return [
        name for name in GAUGES
        if gauges[name] is not None and thresholds[name] is not None and gauges[name] > thresholds[name]
    ]  # fmt: skip


class DriftMonitor:
    """The last ``settings.window`` answers against ``baseline``; the alarm and its log lines.

    ``add`` costs O(1) per answer (the answer's four numbers go into ring buffers); the statistics are computed over
    the window (O(window), numpy) every :data:`CHECK_EVERY` answers and at each :meth:`snapshot`. Not thread-safe: the
    server calls it from its event loop only.
    """

    def __init__(self, baseline: Baseline, settings: DriftSettings | None = None):
        self.baseline = baseline
        self.settings = (settings or DriftSettings()).validate()
        if self.settings.window < 1:
            raise ImagerecError(
                "a drift monitor needs a window of at least 1 answer (window 0 turns drift off)"
            )
        w = self.settings.window
        self.index = {name: i for i, name in enumerate(baseline.labels)}
        self.confidence = np.zeros(w)
        self.top_class = np.zeros(w, np.int64)
        self.unknown = np.zeros(w, bool)
        self.ood = np.full(w, np.nan)
        self.count = 0  # answers seen since start
        self.alarm = False
        self.alarms = 0  # times the alarm rose
        self._since_check = 0
        self._last: dict[str, Any] | None = None

    def add(self, answers: Iterable[Any]) -> None:
        """Fold answers (:class:`~imagerec.prediction.Prediction` s) into the window."""
        k = len(self.baseline.labels)
        for pred in answers:
            i = self.count % self.settings.window
            top = pred.top_k[0][0] if pred.top_k else pred.label
            self.confidence[i] = pred.confidence
            self.top_class[i] = self.index.get(top, k)
            self.unknown[i] = pred.label == UNKNOWN
            self.ood[i] = np.nan if pred.ood_score is None else pred.ood_score
            self.count += 1
            self._since_check += 1
        if self._since_check >= CHECK_EVERY:
            self.check()

    @property
    def size(self) -> int:
        """Answers in the window."""
        return min(self.count, self.settings.window)

    def stats(self) -> AnswerStats:
        n = self.size
        return AnswerStats(self.confidence[:n], self.top_class[:n], self.unknown[:n], self.ood[:n])

    def check(self) -> dict[str, Any]:
        """Compute the gauges, raise or clear the alarm (one log line each way); the snapshot."""
        self._since_check = 0
        n = self.size
        gauges = gauges_of(self.baseline, self.stats())
        limits = thresholds_of(self.baseline, self.settings, n)
        over = past(gauges, limits) if 2 * n >= self.settings.window else []
        if over and not self.alarm:
            self.alarms += 1
            detail = ", ".join(f"{g} {gauges[g]:.3f} > {limits[g]:.3f}" for g in over)
            log.warning("drift alarm: the last %d answers differ from validation: %s", n, detail)
        elif not over and self.alarm:
            log.info("drift alarm cleared: the last %d answers are back within every threshold", n)
        self.alarm = bool(over)
        self._last = {"window": n, "answers": self.count, "gauges": gauges, "thresholds": limits,
                      "past": over, "alarm": self.alarm}  # fmt: skip
        return self._last

    def snapshot(self) -> dict[str, Any]:
        """The current gauges, thresholds, alarm and window size (evaluated now)."""
        return self.check()


__all__ = [
    "GAUGES", "AnswerStats", "Baseline", "DriftMonitor", "answer_stats", "build_baseline", "gauges_of", "past",
    "psi", "thresholds_of", "write_baseline",
]  # fmt: skip
