"""``imagerec.monitoring.drift`` and its two ends: the server's ``imagerec_drift_*`` gauges on /metrics, and
``imagerec monitor DIR --run RUN`` over records written by a real :class:`Recorder`."""

from __future__ import annotations

import io
import json
import logging
import re

import numpy as np
import pytest

from imagefixtures import COLOURS, make_image, run_cli
from imagerec.monitoring.drift import (
    GAUGES,
    AnswerStats,
    Baseline,
    DriftMonitor,
    answer_stats,
    gauges_of,
    past,
    psi,
    thresholds_of,
)
from imagerec.prediction import Prediction
from imagerec.run import RunDir
from imagerec.settings import DriftSettings

LABELS = ["a", "b", "c", "d"]


def synthetic(n: int, seed: int, shifted: float = 0.0) -> AnswerStats:
    """Answers of a 4-class model: confident, classes evenly spread, OOD scores ~ 10; a ``shifted`` share of them
    unsure, all 'd', far from the training data."""
    rng = np.random.default_rng(seed)
    foreign = rng.random(n) < shifted
    confidence = np.where(foreign, rng.uniform(0.3, 0.6, n), rng.beta(20, 1, n))
    top = np.where(foreign, 3, rng.integers(0, 4, n))
    ood = np.where(foreign, rng.normal(40, 5, n), rng.normal(10, 2, n))
    return AnswerStats(confidence, top, confidence < 0.5, ood)


@pytest.fixture(scope="module")
def baseline() -> Baseline:
    return Baseline.fit(
        LABELS, synthetic(4000, seed=0), threshold=0.5, ood_threshold=None, model_version="m1"
    )


def window(stats: AnswerStats, start: int, size: int) -> AnswerStats:
    part = slice(start, start + size)
    return AnswerStats(stats.confidence[part], stats.top_class[part], stats.unknown[part], stats.ood[part])


def test_the_baseline_describes_its_answers_and_round_trips(baseline, tmp_path):
    assert baseline.num_images == 4000
    assert len(baseline.confidence_shares) == len(baseline.confidence_edges) + 1
    assert sum(baseline.confidence_shares) == pytest.approx(1, abs=1e-4)
    assert baseline.class_shares == pytest.approx([0.25] * 4, abs=0.03)
    # no calibrated OOD threshold: val's 95th percentile, so 5% of val is above it
    assert baseline.ood_share == pytest.approx(0.05, abs=0.005)
    assert baseline.ood_mean == pytest.approx(10, abs=0.2)
    path = tmp_path / "drift.json"
    baseline.save(path)
    assert Baseline.load(path) == baseline
    assert baseline.matches(LABELS, 0.5, None, "m1")
    assert not baseline.matches(LABELS, 0.7, None, "m1")  # another --threshold labels answers otherwise
    assert not baseline.matches(LABELS, 0.5, None, "m2")  # another model
    assert not baseline.matches(["a", "b"], 0.5, None, "m1")


def test_a_broken_baseline_file_says_how_to_rebuild_it(tmp_path):
    from imagerec.errors import ImagerecError

    path = tmp_path / "drift.json"
    path.write_text('{"labels": ["a"]}')
    with pytest.raises(ImagerecError, match="imagerec calibrate"):
        Baseline.load(path)


def test_in_distribution_windows_stay_below_every_threshold(baseline):
    settings = DriftSettings(window=500)
    live = synthetic(20_000, seed=1)
    for start in range(0, 20_000 - 500, 250):
        gauges = gauges_of(baseline, window(live, start, 500))
        assert past(gauges, thresholds_of(baseline, settings, 500)) == [], gauges


def test_a_foreign_share_takes_every_gauge_past_its_threshold(baseline):
    gauges = gauges_of(baseline, synthetic(500, seed=2, shifted=0.5))
    limits = thresholds_of(baseline, DriftSettings(window=500), 500)
    assert past(gauges, limits) == list(GAUGES), (gauges, limits)


def test_psi_is_zero_for_the_same_shares_and_grows_with_the_shift():
    shares = np.full(4, 0.25)
    assert psi(shares, 1000, np.array([250, 250, 250, 250])) == pytest.approx(0, abs=1e-9)
    small, large = (
        psi(shares, 1000, np.array([300, 250, 250, 200])),
        psi(shares, 1000, np.array([700, 100, 100, 100])),
    )
    assert 0 < small < large
    assert np.isfinite(psi(shares, 1000, np.array([1000, 0, 0, 0])))  # an empty bin is large, not infinite


def test_thresholds_widen_where_sampling_noise_alone_would_cross_them():
    many = Baseline.fit(
        [str(i) for i in range(100)],
        AnswerStats(np.full(10_000, 0.9), np.arange(10_000) % 100, np.zeros(10_000, bool), np.full(10_000, 5.0)),
        None, None,
    )  # fmt: skip
    settings = DriftSettings()
    # 100 even classes in 500 answers: total variation ~0.18 from sampling alone; the threshold sits above that
    assert thresholds_of(many, settings, 500)["class_shift"] > 0.4
    assert thresholds_of(many, settings, 50_000)["class_shift"] == settings.class_shift


def predictions(stats: AnswerStats) -> list[Prediction]:
    out = []
    for conf, top, unknown, ood in zip(
        stats.confidence, stats.top_class, stats.unknown, stats.ood, strict=True
    ):
        label = LABELS[top]
        out.append(
            Prediction(
                "unknown" if unknown else label, float(conf), [(label, float(conf))], ood_score=float(ood)
            )
        )
    return out


def test_the_monitor_raises_the_alarm_once_and_clears_it_with_one_log_line_each(baseline, caplog):
    monitor = DriftMonitor(baseline, DriftSettings(window=200))
    caplog.set_level(logging.INFO, logger="imagerec.monitoring")
    monitor.add(
        predictions(synthetic(90, seed=3, shifted=1.0))
    )  # foreign, but the window is not half full yet
    assert monitor.snapshot()["alarm"] is False and monitor.snapshot()["window"] == 90
    monitor.add(predictions(synthetic(400, seed=4)))
    assert monitor.alarm is False and monitor.size == 200
    for _ in range(4):
        monitor.add(predictions(synthetic(50, seed=5, shifted=0.8)))
    snap = monitor.snapshot()
    assert snap["alarm"] is True and set(snap["past"]) >= {"ood_share", "embedding_distance"}
    monitor.add(predictions(synthetic(400, seed=6)))
    assert monitor.snapshot()["alarm"] is False and monitor.alarms == 1
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "imagerec.monitoring"]
    assert [level for level, _ in lines] == ["WARNING", "INFO"], lines
    assert "drift alarm" in lines[0][1] and "ood_share" in lines[0][1]
    assert "cleared" in lines[1][1]


def test_answer_stats_reads_predictions_and_records_alike():
    pred = Prediction("unknown", 0.4, [("b", 0.4), ("a", 0.3)], ood_score=None, reason="low_confidence")
    record = {"label": "unknown", "confidence": 0.4, "top_k": [["b", 0.4], ["a", 0.3]], "ood_score": None}
    for stats in (answer_stats([pred], LABELS), answer_stats([record], LABELS)):
        assert (stats.top_class[0], bool(stats.unknown[0]), np.isnan(stats.ood[0])) == (1, True, True)


# --- a real run: training writes the baseline; the server exposes the gauges; the monitor reads records -------------
def test_training_writes_the_runs_drift_baseline(trained_run):
    from imagerec import Classifier

    clf = Classifier.load(trained_run)
    baseline = Baseline.load(RunDir(trained_run).drift_baseline)
    assert baseline.labels == clf.labels and baseline.model_version == clf.version
    assert baseline.matches(clf.labels, clf.threshold_for(None), clf.ood_threshold, clf.version)


def png_of(colour: str, seed: int = 0) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(make_image(COLOURS[colour], np.random.default_rng(seed))).save(buf, format="PNG")
    return buf.getvalue()


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, flags=re.M)
    assert match, f"{name} missing from /metrics"
    return float(match.group(1))


def test_metrics_carry_the_drift_gauges_of_a_real_server(trained_run):
    import httpx

    from imagerec import Classifier
    from imagerec.server.app import create_app
    from imagerec.settings import ServeSettings
    from server.conftest import LiveServer

    app = create_app(Classifier.load(trained_run), ServeSettings(drift_window=8, decode_workers=0))
    with LiveServer(app) as live, httpx.Client(base_url=live.url, timeout=30) as client:
        text = client.get("/metrics").text
        assert metric(text, "imagerec_drift_window") == 0 and metric(text, "imagerec_drift_alarm") == 0
        colours = list(COLOURS)
        for i in range(5):
            reply = client.post(
                "/v1/predict", files={"file": ("x.png", png_of(colours[i % 3], i), "image/png")}
            )
            assert reply.status_code == 200, reply.text
        text = client.get("/metrics").text
    assert metric(text, "imagerec_drift_window") == 5
    for name in GAUGES:
        assert np.isfinite(metric(text, f"imagerec_drift_{name}")), name
    assert re.search(r'^imagerec_drift_threshold\{gauge="ood_share"\} \S+$', text, flags=re.M)
    assert metric(text, "imagerec_drift_alarm") in (0.0, 1.0)


def test_drift_off_leaves_nan_gauges_and_no_alarm(trained_run):
    from prometheus_client import CollectorRegistry, generate_latest

    from imagerec import Classifier
    from imagerec.server.drift import DriftGauges, drift_monitor
    from imagerec.settings import ServeSettings

    assert drift_monitor(Classifier.load(trained_run), ServeSettings(drift_window=0)) is None
    registry = CollectorRegistry()
    DriftGauges(registry).show(None)
    text = generate_latest(registry).decode()
    assert np.isnan(metric(text, "imagerec_drift_ood_share")) and metric(text, "imagerec_drift_alarm") == 0


def test_monitor_cli_summarises_records_and_writes_the_page(trained_run, tmp_path, capsys):
    from imagerec import Classifier
    from imagerec.monitoring.records import Observation, Recorder
    from imagerec.settings import RecordSettings

    clf = Classifier.load(trained_run)
    images = [png_of(c, seed) for seed in range(20) for c in COLOURS]
    batch = np.stack([clf.preprocess(data) for data in images])
    answers = clf.answers(clf.predict_scores(batch), 2)
    recorder = Recorder(tmp_path / "rec", RecordSettings(sample=1.0)).start()
    for data, pred in zip(images, answers, strict=True):
        recorder.add(Observation(pred, data, None))
    recorder.stop()

    code, out, err = run_cli(capsys, "monitor", str(tmp_path / "rec"), "--run", str(trained_run), "--window", "20",
                             "--json")  # fmt: skip
    assert code == 0, err
    summary = json.loads(out)
    assert summary["records"] == 60 and summary["latest"]["window"] == 20
    assert set(summary["latest"]["gauges"]) == set(GAUGES)
    assert summary["unusual"] and all(u["image"] for u in summary["unusual"])
    page = (tmp_path / "rec" / "monitor.html").read_text()
    assert page.count("data:image/png;base64,") >= 2  # the plots and at least one thumbnail, embedded

    code, out, err = run_cli(capsys, "monitor", str(tmp_path / "rec"), "--run", str(trained_run), "--out",
                             str(tmp_path / "m.html"))  # fmt: skip
    assert code == 0 and "ood_share" in out and (tmp_path / "m.html").exists()


def test_monitor_cli_refuses_a_folder_without_records(trained_run, tmp_path, capsys):
    code, _, err = run_cli(capsys, "monitor", str(tmp_path), "--run", str(trained_run))
    assert code == 2 and "no records/" in err and len(err.strip().splitlines()) == 1
