"""``imagerec monitor DIR --run RUN``: the drift gauges of a ``--record DIR`` over time, and ``monitor.html``.

The same statistics as the server's live gauges (:mod:`imagerec.monitoring.drift`), computed over the recorded
answers: a window of the last ``window`` answers, slid along the records every tenth of a window, so the plots show
when the traffic started to differ from validation and which gauge saw it first. The page is self-contained (plots
and thumbnails embedded as data URIs), so it can be mailed or attached to a ticket.

Example:
    >>> result = monitor("records/", "runs/fmnist")
    >>> result.latest["alarm"], result.write_html("records/monitor.html")
"""

from __future__ import annotations

import base64
import html
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imagerec.errors import ImagerecError
from imagerec.monitoring.drift import (
    GAUGES,
    AnswerStats,
    Baseline,
    answer_stats,
    build_baseline,
    gauges_of,
    past,
    thresholds_of,
)
from imagerec.monitoring.records import Records, read_records
from imagerec.settings import DriftSettings

#: the most unusual recent pictures shown (highest OOD score; lowest confidence without scores)
UNUSUAL = 24
MIME = {"png": "image/png", "jpg": "image/jpeg", "gif": "image/gif", "bmp": "image/bmp", "webp": "image/webp"}


@dataclass
class MonitorResult:
    """The drift of recorded answers: one point per window position, the latest, the most unusual pictures."""

    records: Records
    baseline: Baseline
    settings: DriftSettings
    points: list[dict[str, Any]]
    unusual: list[dict[str, Any]] = field(default_factory=list)

    @property
    def latest(self) -> dict[str, Any] | None:
        return self.points[-1] if self.points else None

    @property
    def first_alarm(self) -> dict[str, Any] | None:
        """The first window position where the alarm was up (None: never)."""
        return next((p for p in self.points if p["alarm"]), None)

    def summary(self) -> dict[str, Any]:
        """What ``--json`` prints: counts, time span, the latest gauges and thresholds, the alarm."""
        rows = self.records.rows
        return {
            "records": len(rows),
            "torn_lines": self.records.torn,
            "first_time": rows[0].get("time") if rows else None,
            "last_time": rows[-1].get("time") if rows else None,
            "window": self.settings.window,
            "baseline_images": self.baseline.num_images,
            "latest": self.latest,
            "first_alarm": self.first_alarm,
            "alarm_windows": sum(1 for p in self.points if p["alarm"]),
            "unusual": [
                {k: r.get(k) for k in ("time", "label", "confidence", "ood_score", "image")}
                for r in self.unusual
            ],
        }

    def write_html(self, path: str | os.PathLike) -> Path:
        """Write ``monitor.html`` (atomically) and return its path."""
        from imagerec.utils import atomic_write_text

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, render_html(self))
        return path


def monitor(
    root: str | os.PathLike, run: str | os.PathLike, settings: DriftSettings | None = None
) -> MonitorResult:
    """The drift of the answers recorded in ``root`` against run ``run``'s baseline (its ``drift.json``; built
    from its validation split when it has none, without writing the run).

    Raises:
        ImagerecError: ``root`` holds no records, or the run has neither a baseline nor a readable val split.
    """
    settings = (settings or DriftSettings()).validate()
    if settings.window < 1:
        raise ImagerecError("--window must be at least 1 answer")
    records = read_records(root)
    if not records.rows:
        raise ImagerecError(f"{root}: no records yet; serve with --record {root} and send some images first")
    baseline = run_baseline(run)
    stats = answer_stats(records.rows, baseline.labels)
    return MonitorResult(records, baseline, settings, series(baseline, stats, records.rows, settings),
                         most_unusual(records))  # fmt: skip


def run_baseline(run: str | os.PathLike) -> Baseline:
    """Run ``run``'s drift baseline: ``RUN/drift.json``, else built from its validation split (TensorFlow)."""
    from imagerec.run import RunDir

    run_dir = RunDir(run).require()
    if run_dir.drift_baseline.exists():
        return Baseline.load(run_dir.drift_baseline)
    from imagerec.classifier import Classifier
    from imagerec.evaluation.data import run_split

    clf = Classifier.load(run, runtime="keras")
    return build_baseline(clf, run_split(clf, "val").images)


def series(
    baseline: Baseline, stats: AnswerStats, rows: list[dict[str, Any]], settings: DriftSettings
) -> list[dict]:
    """The gauges of the last ``window`` answers at every tenth of a window along ``rows`` (and at the end)."""
    n, w = len(rows), settings.window
    step = max(1, w // 10)
    ends = sorted({*range(min(step, n), n + 1, step), n})
    points = []
    for end in ends:
        start = max(0, end - w)
        window = AnswerStats(
            *(getattr(stats, f)[start:end] for f in ("confidence", "top_class", "unknown", "ood"))
        )
        gauges = gauges_of(baseline, window)
        limits = thresholds_of(baseline, settings, end - start)
        over = past(gauges, limits) if 2 * (end - start) >= w else []
        points.append({"time": rows[end - 1].get("time"), "answers": end, "window": end - start, "gauges": gauges,
                       "thresholds": limits, "past": over, "alarm": bool(over)})  # fmt: skip
    return points


def most_unusual(records: Records, recent: int = 5000, limit: int = UNUSUAL) -> list[dict[str, Any]]:
    """The recorded answers with a stored picture among the last ``recent``, highest OOD score first (lowest
    confidence first when there are no scores)."""
    rows = [r for r in records.rows[-recent:] if r.get("image") and records.image_path(r).exists()]  # type: ignore[union-attr]

    def unusual(row: dict[str, Any]) -> float:
        score = row.get("ood_score")
        return float(score) if score is not None else -float(row.get("confidence") or 0.0)

    return sorted(rows, key=unusual, reverse=True)[:limit]


# --- the page ------------------------------------------------------------------------------------------------------
def gauges_png(result: MonitorResult) -> bytes:
    """One panel per gauge over time, with its threshold and the alarm windows shaded."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    points = result.points
    t0 = points[0]["time"] or 0.0
    x = np.array([((p["time"] or t0) - t0) / 60.0 for p in points])
    fig, axes = plt.subplots(len(GAUGES), 1, figsize=(8, 1.9 * len(GAUGES)), sharex=True)
    for ax, name in zip(axes, GAUGES, strict=True):
        y = np.array([np.nan if p["gauges"][name] is None else p["gauges"][name] for p in points], float)
        t = np.array(
            [np.nan if p["thresholds"][name] is None else p["thresholds"][name] for p in points], float
        )
        ax.plot(x, y, color="tab:blue", lw=1.4, label=name)
        ax.plot(x, t, color="tab:red", lw=1, ls="--", label="threshold")
        for p, xi in zip(points, x, strict=True):
            if name in p["past"]:
                ax.axvline(xi, color="tab:red", alpha=0.08, lw=3)
        ax.set_ylabel(name.replace("_", "\n"), fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper left", fontsize=8)
    axes[-1].set_xlabel("minutes since the first record")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def render_html(result: MonitorResult) -> str:
    """The self-contained monitor page."""
    import time

    def when(t: float | None) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t)) if t else "-"

    s, latest, first = result.summary(), result.latest or {}, result.first_alarm
    state = "ALARM" if latest.get("alarm") else "ok"
    rows = "".join(
        f"<tr><td>{name}</td><td>{_num(latest['gauges'][name])}</td><td>{_num(latest['thresholds'][name])}</td>"
        f"<td>{'past' if name in latest['past'] else ''}</td></tr>"
        for name in GAUGES
    )
    plot = "data:image/png;base64," + base64.b64encode(gauges_png(result)).decode("ascii")
    thumbs = "".join(_thumb(result.records, r) for r in result.unusual) or "<p>No stored pictures.</p>"
    alarm = f"first alarm at {when(first['time'])} ({', '.join(first['past'])})" if first else "no alarm"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>imagerec monitor</title><style>
body{{font-family:system-ui,sans-serif;margin:2em;max-width:960px}} td,th{{padding:2px 10px;text-align:left}}
.state{{font-weight:bold;color:{"#b00" if state == "ALARM" else "#070"}}} figure{{display:inline-block;margin:4px;
width:112px;font-size:11px}} figure img{{width:112px;image-rendering:pixelated;border:1px solid #ccc}}</style></head>
<body><h1>Drift: <span class="state">{state}</span></h1>
<p>{s["records"]} records from {when(s["first_time"])} to {when(s["last_time"])} ({s["torn_lines"]} torn lines
skipped); windows of {s["window"]} answers against {s["baseline_images"]} validation answers; {alarm};
{s["alarm_windows"]} of {len(result.points)} window positions in alarm.</p>
<h2>Latest window ({latest.get("window", 0)} answers)</h2>
<table><tr><th>gauge</th><th>value</th><th>threshold</th><th></th></tr>{rows}</table>
<h2>Over time</h2><img alt="drift gauges over time" src="{plot}" style="max-width:100%">
<h2>Most unusual recent pictures</h2>{thumbs}</body></html>
"""


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _thumb(records: Records, row: dict[str, Any]) -> str:
    path = records.image_path(row)
    ext = path.suffix.lstrip(".").lower() if path else ""
    try:
        data = path.read_bytes() if path else b""
    except OSError:
        return ""
    uri = f"data:{MIME.get(ext, 'application/octet-stream')};base64," + base64.b64encode(data).decode("ascii")
    caption = f"{row.get('label')} {float(row.get('confidence') or 0):.2f}"
    if row.get("ood_score") is not None:
        caption += f" ood {float(row['ood_score']):.0f}"
    return f'<figure><img src="{uri}" alt=""><figcaption>{html.escape(caption)}</figcaption></figure>'


__all__ = ["MonitorResult", "monitor", "most_unusual", "render_html", "run_baseline", "series"]
