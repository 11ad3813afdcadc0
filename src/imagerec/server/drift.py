"""The server's drift gauges (``imagerec.monitoring.drift``): where the baseline comes from, and ``/metrics``.

``imagerec serve`` watches the last ``--drift-window`` answers (default 500; 0 = off). The baseline is the run's
``drift.json`` (written by training and ``imagerec calibrate``) when it describes the served model and threshold;
otherwise it is built at start-up from the run's validation split (a few seconds; the run is not written to), and
when that split cannot be read the server serves without drift gauges and says so in its log.

Gauges (NaN where not measurable, e.g. a run without an OOD reference)::

    imagerec_drift_confidence_psi        imagerec_drift_unknown_share     imagerec_drift_ood_share
    imagerec_drift_class_shift           imagerec_drift_embedding_distance
    imagerec_drift_threshold{gauge=...}  each one's alarm threshold
    imagerec_drift_window                answers in the window
    imagerec_drift_alarm                 1 while any gauge is past its threshold (a full enough window)
"""

from __future__ import annotations

import logging
import time

from imagerec.errors import ImagerecError
from imagerec.monitoring.drift import GAUGES, Baseline, DriftMonitor, build_baseline
from imagerec.settings import DriftSettings, ServeSettings

log = logging.getLogger("imagerec.server")

HELP = {
    "confidence_psi": "Population stability index of top-class confidence, last answers vs validation",
    "unknown_share": "Share of 'unknown' answers in the drift window",
    "ood_share": "Share of answers above the out-of-distribution limit in the drift window",
    "class_shift": "Total variation distance of predicted-class shares, drift window vs validation",
    "embedding_distance": "Mean OOD score (embedding distance to the nearest class mean) / validation's mean",
}


def drift_monitor(clf, settings: ServeSettings, build: bool = True) -> DriftMonitor | None:
    """The drift monitor of ``clf`` as served with ``settings``; None (with one log line saying why) when drift is
    off or no baseline can be had. ``build``: read the validation split when the run has no matching baseline
    (slow: not on the event loop)."""
    if settings.drift_window == 0:
        return None
    limit = clf.threshold_for(settings.threshold)
    ood_threshold = clf.ood_threshold if settings.threshold != 0 else None
    path = clf.run_dir.drift_baseline
    baseline = None
    if path.exists():
        try:
            baseline = Baseline.load(path)
        except ImagerecError as exc:
            log.warning("drift: %s", exc)
        if baseline is not None and not baseline.matches(clf.labels, limit, ood_threshold, clf.version):
            baseline = None
    if baseline is None and build:
        from imagerec.evaluation.data import run_split

        t0 = time.perf_counter()
        try:
            images = run_split(clf, "val").images
            baseline = build_baseline(clf, images, settings.threshold)
        except (ImagerecError, OSError) as exc:
            log.warning("drift gauges off: no baseline (%s)", exc)
            return None
        log.info(
            "drift baseline built from %d validation images in %.1f s (store it with 'imagerec calibrate RUN')",
            baseline.num_images, time.perf_counter() - t0,
        )  # fmt: skip
    if baseline is None:
        log.warning("drift gauges off for this model: its run has no drift.json for these thresholds")
        return None
    return DriftMonitor(baseline, DriftSettings(window=settings.drift_window))


class DriftGauges:
    """The ``imagerec_drift_*`` gauges of one app's registry (see the module docstring)."""

    def __init__(self, registry):
        from prometheus_client import Gauge

        self.values = {
            name: Gauge(f"imagerec_drift_{name}", HELP[name], registry=registry) for name in GAUGES
        }
        self.thresholds = Gauge(
            "imagerec_drift_threshold", "Alarm threshold of each drift gauge", ["gauge"], registry=registry
        )
        self.window = Gauge("imagerec_drift_window", "Answers in the drift window", registry=registry)
        self.alarm = Gauge(
            "imagerec_drift_alarm", "1 while a drift gauge is past its threshold, else 0", registry=registry
        )
        self.show(None)

    def show(self, monitor: DriftMonitor | None) -> None:
        """Set the gauges to ``monitor``'s statistics now (NaN and alarm 0 without a monitor)."""
        nan = float("nan")
        snap = monitor.snapshot() if monitor is not None else None
        for name in GAUGES:
            value = snap["gauges"][name] if snap else None
            limit = snap["thresholds"][name] if snap else None
            self.values[name].set(nan if value is None else value)
            self.thresholds.labels(gauge=name).set(nan if limit is None else limit)
        self.window.set(snap["window"] if snap else 0)
        self.alarm.set(1 if snap and snap["alarm"] else 0)
