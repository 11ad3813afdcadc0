"""``imagerec.monitoring.records``: the record format, torn lines, the caps, the worth-keeping rule, a directory
that cannot be written. The server and video ends are in tests/server/test_serve_record.py and
tests/video/test_video_record.py."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from imagerec.monitoring.caps import prune
from imagerec.monitoring.records import FIELDS, Observation, Recorder, read_records
from imagerec.prediction import Prediction
from imagerec.settings import RecordSettings


def png(width: int = 28, height: int = 20, seed: int = 0) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def answer(confidence: float = 0.9, reason: str | None = None, ood: float | None = 3.0) -> Prediction:
    label = "unknown" if reason else "red"
    return Prediction(
        label, confidence, [("red", confidence), ("blue", 1 - confidence)], ood_score=ood, reason=reason
    )


def recorded(root: Path, observations: list[Observation], **settings) -> Recorder:
    recorder = Recorder(root, RecordSettings(sample=0.0, **settings), ood_limit=10.0).start()
    for obs in observations:
        recorder.add(obs)
    recorder.stop()
    return recorder


def picture_files(root: Path) -> list[Path]:
    return [p for p in (root / "images").rglob("*") if p.is_file()]


def test_a_record_round_trips_every_field(tmp_path):
    data = png(28, 20)
    embedding = np.linspace(-2, 2, 16).astype(np.float32)
    obs = Observation(answer(0.3), data, embedding, "v3", "keras")
    recorder = recorded(tmp_path, [obs, Observation(answer(0.97), png(seed=1), embedding, "v3", "keras")])
    assert (recorder.written, recorder.dropped, recorder.state) == (2, 0, "stopped")

    records = read_records(tmp_path)
    assert records.torn == 0 and len(records.rows) == 2
    low, high = records.rows
    assert tuple(low) == FIELDS
    assert low["sha256"] == hashlib.sha256(data).hexdigest()
    assert (low["bytes"], low["width"], low["height"]) == (len(data), 28, 20)
    assert (low["label"], low["confidence"], low["top_k"]) == ("red", 0.3, [["red", 0.3], ["blue", 0.7]])
    assert (low["source"], low["model_version"], low["runtime"], low["ood_score"]) == (
        "serve",
        "v3",
        "keras",
        3.0,
    )
    np.testing.assert_allclose(records.embeddings()[0], embedding, atol=2e-3)  # float16
    assert low["why"] == "low_confidence" and records.image_path(low).read_bytes() == data  # kept as uploaded
    assert high["why"] is None and high["image"] is None


def test_a_frame_is_kept_as_png_of_its_pixels(tmp_path):
    from PIL import Image

    frame = np.random.default_rng(0).integers(0, 255, (12, 16, 3), dtype=np.uint8)
    recorded(
        tmp_path, [Observation(answer(reason="low_confidence"), None, None, source="video", array=frame)]
    )
    row = read_records(tmp_path).rows[0]
    assert (row["source"], row["width"], row["height"], row["why"]) == ("video", 16, 12, "low_confidence")
    with Image.open(tmp_path / row["image"]) as image:
        np.testing.assert_array_equal(np.asarray(image), frame)
    assert row["sha256"] == hashlib.sha256((tmp_path / row["image"]).read_bytes()).hexdigest()


def test_a_torn_last_line_is_skipped_and_counted(tmp_path):
    recorded(tmp_path, [Observation(answer(), png(), None) for _ in range(3)])
    (path,) = (tmp_path / "records").glob("records-*.jsonl")
    with path.open("ab") as handle:
        handle.write(b'{"time": 17966275')  # a power cut mid-line
    records = read_records(tmp_path)
    assert (len(records.rows), records.torn) == (3, 1)


def test_only_the_answers_worth_reviewing_keep_a_picture():
    recorder = Recorder("unused", RecordSettings(sample=0.0, low_confidence=0.5), ood_limit=10.0)
    assert recorder.worth_keeping(answer(0.2, reason="low_confidence")) == "low_confidence"
    assert recorder.worth_keeping(answer(0.9, reason="out_of_distribution")) == "out_of_distribution"
    assert recorder.worth_keeping(answer(0.4)) == "low_confidence"
    assert recorder.worth_keeping(answer(0.9, ood=11.0)) == "out_of_distribution"
    assert recorder.worth_keeping(answer(0.9, ood=float("nan"))) is None
    assert recorder.worth_keeping(answer(0.9)) is None
    sampled = Recorder("unused", RecordSettings(sample=1.0))
    assert sampled.worth_keeping(answer(0.9)) == "sample"


def test_record_images_none_stores_no_pixels(tmp_path):
    frame = np.zeros((8, 8, 3), np.uint8)
    observations = [Observation(answer(0.1), png(seed=i), None) for i in range(5)]
    observations.append(Observation(answer(0.1), None, None, source="video", array=frame))
    recorded(tmp_path, observations, images="none")
    rows = read_records(tmp_path).rows
    assert len(rows) == 6 and picture_files(tmp_path) == []
    assert all(r["image"] is None for r in rows)
    assert all(r["sha256"] for r in rows[:5])  # the hash and size of an upload are no pixels


def test_max_images_keeps_the_newest_pictures(tmp_path):
    recorded(tmp_path, [Observation(answer(0.1), png(seed=i), None) for i in range(6)], max_images=2)
    assert len(picture_files(tmp_path)) == 2
    rows = read_records(tmp_path).rows
    assert len(rows) == 6
    assert {r["image"] for r in rows[-2:]} == {str(p.relative_to(tmp_path)) for p in picture_files(tmp_path)}


def _file(path: Path, size: int, age_days: float = 0.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    stamp = time.time() - age_days * 86400
    os.utime(path, (stamp, stamp))
    return path


def test_prune_drops_old_files_then_the_oldest_past_max_mb(tmp_path):
    records = tmp_path / "records"
    old = _file(records / "records-20250101T000000-1-0001.jsonl", 100, age_days=40)
    old_picture = _file(tmp_path / "images" / "20250101" / "000000.000000-aa.png", 100, age_days=40)
    mid = [
        _file(records / f"records-20261201T00000{i}-1-000{i + 2}.jsonl", 1000, age_days=5 - i)
        for i in range(4)
    ]
    prune(tmp_path, RecordSettings(max_age_days=30, max_mb=2500 / 2**20))
    assert not old.exists() and not old_picture.exists()
    assert [p.exists() for p in mid] == [False, False, True, True]  # 2 x 1000 bytes fit under 2500


def test_prune_leaves_the_file_a_live_worker_writes(tmp_path):
    """``--workers N``: another live process's newest record file is never removed, whatever its age."""
    other = os.getppid()  # alive, and not this process
    busy = _file(tmp_path / "records" / f"records-20250101T000000-{other}-0001.jsonl", 100, age_days=90)
    done = _file(tmp_path / "records" / "records-20250101T000000-999999999-0001.jsonl", 100, age_days=90)
    prune(tmp_path, RecordSettings(max_age_days=30))
    assert busy.exists() and not done.exists()


def test_a_directory_that_cannot_be_made_stops_recording_with_one_log_line(tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with caplog.at_level(logging.ERROR, logger="imagerec.monitoring"):
        recorder = Recorder(blocker / "records").start()
        recorder.add(Observation(answer(), png(), None))
        recorder.stop()
    assert recorder.state == "failed" and "cannot write" in recorder.error
    assert recorder.dropped == 1 and recorder.written == 0
    assert len(caplog.records) == 1 and "serving goes on" in caplog.records[0].getMessage()


WRITE_FAILS = """
import json, resource, signal, sys, time
import numpy as np
from imagerec.monitoring.records import Observation, Recorder
from imagerec.prediction import Prediction
from imagerec.settings import RecordSettings
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
recorder = Recorder(sys.argv[1], RecordSettings(sample=0.0, flush_s=0.05)).start()
pred = Prediction("red", 0.9, [("red", 0.9)], ood_score=1.0)
deadline = time.monotonic() + 60
while recorder.state == "recording" and time.monotonic() < deadline:
    recorder.add(Observation(pred, b"x" * 100, np.ones(64, np.float32)))
    time.sleep(0.001)
recorder.stop()
print(json.dumps({"state": recorder.state, "error": recorder.error, "written": recorder.written}))
"""


def test_a_failing_write_stops_recording_once(tmp_path):
    """A real write failure (RLIMIT_FSIZE: the file may grow no further, like a full disk)."""
    done = subprocess.run(
        [sys.executable, "-c", WRITE_FAILS, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    state = json.loads(done.stdout)
    assert state["state"] == "failed" and "too large" in state["error"].lower(), state
    assert state["written"] > 0
    assert done.stderr.count("recording to") == 1, done.stderr
    assert read_records(tmp_path).torn == 0  # the part of a line that fitted is cut off again
