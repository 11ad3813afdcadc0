"""``imagerec video RUN --source CLIP --record DIR``: one record per classified frame (imagerec.video.recording)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from videofactory import held, write_clip

from imagerec.cli import main
from imagerec.monitoring.records import read_records

pytest.importorskip("cv2")


def run_cli(capsys, *args: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main(["video", *args])
    return info.value.code, capsys.readouterr().out


def test_each_classified_frame_is_one_record_and_the_doubtful_frames_are_kept(trained_run, tmp_path, capsys):
    from PIL import Image

    clip = write_clip(tmp_path / "c.mp4", held(("red", "blue"), 6), fps=10.0)
    record = tmp_path / "recorded"
    # --threshold 1: every answer below full confidence is 'unknown' (low confidence) and worth a look; a frame the
    # tiny model is certain of (a float32 probability of exactly 1.0, which training sometimes reaches) is answered
    code, out = run_cli(capsys, str(trained_run), "--source", str(clip), "--record", str(record), "--every", "2",
                        "--threshold", "1", "--json")  # fmt: skip
    assert code == 0
    summary = json.loads(out)
    records = read_records(record)
    assert len(records.rows) == summary["frames_classified"] == 6 and records.torn == 0
    assert {r["source"] for r in records.rows} == {"video"}
    for row in records.rows:
        if row["label"] == "unknown":  # doubtful: its picture is kept
            assert row["why"] in ("low_confidence", "out_of_distribution") and row["image"] is not None, row
        else:  # certain (a probability of exactly 1.0): kept only as part of the random sample
            assert row["why"] in (None, "sample") and (row["image"] is None) == (row["why"] is None), row
    assert sum(row["label"] == "unknown" for row in records.rows) >= 1
    assert records.embeddings().shape[0] == 6  # the stream asked the model for embeddings
    for row in records.rows:
        if row["image"] is not None:
            with Image.open(records.image_path(row)) as image:
                assert image.format == "PNG" and image.size == (64, 48) == (row["width"], row["height"])
    assert "record" in summary["outputs"]


def test_record_images_none_keeps_no_frame(trained_run, tmp_path, capsys):
    clip = write_clip(tmp_path / "c.mp4", held(("green",), 4), fps=10.0)
    record = tmp_path / "recorded"
    code, _ = run_cli(capsys, str(trained_run), "--source", str(clip), "--record", str(record),
                      "--record-images", "none", "--threshold", "1")  # fmt: skip
    assert code == 0
    rows = read_records(record).rows
    assert len(rows) == 4 and all(r["image"] is None for r in rows)
    assert not [p for p in (record / "images").rglob("*") if p.is_file()]


def test_the_stream_asks_for_embeddings_only_when_recording(trained_run, tmp_path):
    from imagerec import Classifier

    clf = Classifier.load(trained_run)
    clip = write_clip(tmp_path / "c.mp4", held(("red",), 2), fps=10.0)
    plain = [r.scores for r in clf.stream(str(clip)) if r.classified]
    recorded = [r.scores for r in clf.stream(str(clip), embeddings=True) if r.classified]
    k = len(clf.labels)
    assert {s.shape[0] for s in plain} == {k + 1}  # probabilities + the OOD score
    assert {s.shape[0] for s in recorded} == {k + 1 + clf.embed(np.zeros((32, 32, 3), np.uint8)).shape[1]}


def test_an_unwritable_record_dir_leaves_the_video_running(trained_run, tmp_path, capsys):
    clip = write_clip(tmp_path / "c.mp4", held(("red",), 3), fps=10.0)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, out = run_cli(
        capsys, str(trained_run), "--source", str(clip), "--record", str(blocker / "rec"), "--json"
    )
    assert code == 0 and json.loads(out)["frames_classified"] == 3
    assert "failed" in json.loads(out)["outputs"]["record"]
