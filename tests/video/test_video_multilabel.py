"""Video with a multi-label run: each frame carries its label set, the overlay draws it, JSON lines hold it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from imagefixtures import make_multilabel_image
from imagerec.video.config import FrameResult
from imagerec.video.output import draw, run_video
from imagerec.video.stream import VideoConfig

cv2 = pytest.importorskip("cv2")
SEGMENTS = [("red",), ("blue", "green"), ("blue", "green", "red")]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """3 segments x 8 frames at 8 fps (64x48 MJPG, nearly lossless): one, two, then three colour squares."""
    path = tmp_path_factory.mktemp("video") / "sets.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 8.0, (64, 48))
    rng = np.random.default_rng(3)
    for present in SEGMENTS:
        rgb = make_multilabel_image(
            list(present), rng
        )  # one picture held for the segment, like a still camera
        frame = cv2.cvtColor(cv2.resize(rgb, (64, 48), interpolation=cv2.INTER_NEAREST), cv2.COLOR_RGB2BGR)
        for _ in range(8):
            writer.write(frame)
    writer.release()
    return path


def decoded(path) -> list[np.ndarray]:
    cap, frames = cv2.VideoCapture(str(path)), []
    while (frame := cap.read()[1]) is not None:
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    cap.release()
    return frames


def test_frames_and_json_lines_carry_label_sets(multilabel_classifier, clip, tmp_path):
    lines = tmp_path / "frames.jsonl"
    summary = run_video(multilabel_classifier, str(clip), out=tmp_path / "annotated.mp4", jsonl=lines,
                        config=VideoConfig(smooth=0.0))  # fmt: skip
    records = [json.loads(line) for line in lines.read_text().splitlines()]
    assert len(records) == 24
    # unsmoothed, each frame's set is what predict answers for that very frame (no train/serve skew)
    expected = multilabel_classifier.predict(decoded(clip))
    assert [r["labels"] for r in records] == [p.labels for p in expected]
    assert all(r["label"] == (r["labels"][0] if r["labels"] else "unknown") for r in records)
    held = [sorted(records[i * 8 + 4]["labels"]) for i in range(3)]  # the middle frame of each segment
    assert held == [sorted(s) for s in SEGMENTS]
    # the timeline has a segment per label set, each naming its set
    assert [sorted(s["labels"]) for s in summary["segments"]][:1] == [["red"]]
    assert {tuple(sorted(s["labels"])) for s in summary["segments"]} >= {tuple(sorted(s)) for s in SEGMENTS}


def test_the_overlay_draws_the_label_set(monkeypatch):
    drawn: list[str] = []
    real = cv2.putText
    monkeypatch.setattr(
        cv2, "putText", lambda image, text, *a, **k: drawn.append(text) or real(image, text, *a, **k)
    )
    result = FrameResult(0, 0.0, "green", 0.93, [("green", 0.93)], True, 12.0, labels=["green", "red"])
    image = draw(np.zeros((120, 160, 3), np.uint8), result, None)
    assert drawn[0] == "green + red 93%" and result.to_dict()["labels"] == ["green", "red"]
    assert image[5:20, 5:60].any()  # the text is on the frame
    single = FrameResult(0, 0.0, "green", 0.93, [("green", 0.93)], True, 12.0)
    assert single.shown == "green" and "labels" not in single.to_dict()
