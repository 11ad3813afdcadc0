"""``imagerec video`` end to end: a real subprocess stopped by SIGTERM, and every bad input as one line + exit 2."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from videofactory import held, read_frames, silent_server, write_clip

from imagerec.cli import main

pytest.importorskip("cv2")


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(["video", *args])
    out, err = capsys.readouterr()
    return info.value.code, out, err


def test_cli_writes_outputs_and_prints_summary(trained_run, tmp_path, capsys):
    clip = write_clip(tmp_path / "c.mp4", held(("blue", "red"), 15), fps=15.0)
    out, lines = tmp_path / "a.mp4", tmp_path / "f.jsonl"
    code, stdout, _ = run_cli(
        capsys,
        str(trained_run),
        "--source",
        str(clip),
        "--out",
        str(out),
        "--jsonl",
        str(lines),
        "--json",
        "--smooth",
        "0",
    )
    assert code == 0
    summary = json.loads(stdout)
    assert summary["frames_read"] == 30 and summary["frames_classified"] == 30
    assert summary["segments"][0]["start_s"] == 0.0 and summary["segments"][-1]["end_s"] == pytest.approx(2.0)
    assert read_frames(out)[0] == 30 and len(lines.read_text().splitlines()) == 30
    assert video_codec(out) == "h264" and "notes" not in summary  # browsers play H.264, not OpenCV's mp4v


def video_codec(path: Path) -> str:
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "stream=codec_name",
         "-of", "default=nw=1:nk=1", str(path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return probe.stdout.strip()


def test_without_ffmpeg_the_mp4_is_mpeg4_part2_with_a_note(trained_run, tmp_path, capsys, monkeypatch):
    from imagerec.video import output

    monkeypatch.setattr(output, "ffmpeg_with_x264", lambda: None)
    clip = write_clip(tmp_path / "c.mp4", held(("blue",), 5), fps=15.0)
    out = tmp_path / "a.mp4"
    code, stdout, _ = run_cli(capsys, str(trained_run), "--source", str(clip), "--out", str(out))
    assert code == 0 and read_frames(out)[0] == 5
    assert video_codec(out) == "mpeg4"
    assert "note: a.mp4: written as MPEG-4 Part 2 (mp4v), which browsers do not play" in stdout


def test_odd_frame_sizes_encode_as_h264(tmp_path):
    """libx264 with yuv420p needs even sides: an odd-sized frame is padded by one pixel, not refused."""
    import numpy as np

    from imagerec.video.output import AnnotatedWriter

    out = tmp_path / "odd.mp4"
    writer = AnnotatedWriter(out, 10.0)
    for _ in range(6):
        writer.write(np.full((49, 65, 3), (0, 0, 255), np.uint8))
    assert writer.close() and writer.codec == "h264"
    count, _, size = read_frames(out)
    assert count == 6 and size == (66, 50) and video_codec(out) == "h264"
    assert not list(tmp_path.glob(".*partial*"))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_mid_run_leaves_complete_outputs(trained_run, tmp_path, sig):
    """SIGTERM (a supervisor) or SIGINT (Ctrl-C) mid-run: the stream stops, every output is complete."""
    clip = write_clip(tmp_path / "long.mp4", held(("red", "green", "blue"), 2000))
    out, lines = tmp_path / "annotated.mp4", tmp_path / "frames.jsonl"
    cmd = [sys.executable, "-m", "imagerec", "video", str(trained_run), "--source", str(clip), "--out", str(out),
           "--jsonl", str(lines), "--json", "--batch-size", "1"]  # fmt: skip
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if lines.exists() and lines.read_text().count("\n") >= 20:
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    summary = json.loads(stdout)
    assert summary["ended_by"] == f"stopped by {sig.name}" and summary["frames_read"] < 6000
    records = [json.loads(line) for line in lines.read_text().splitlines()]  # every line parses
    assert len(records) == summary["frames_classified"] >= 20
    count, _, size = read_frames(out)  # the MP4 is finalised and opens
    assert count == summary["frames_yielded"] and size == (64, 48)
    assert not list(tmp_path.glob(".*partial*"))


def test_bad_inputs_give_one_line_and_exit_2(trained_run, tmp_path, capsys):
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 20)
    noise = tmp_path / "noise.avi"
    noise.write_bytes(os.urandom(4096))
    empty = tmp_path / "empty.mp4"
    empty.touch()
    clip = write_clip(tmp_path / "ok.mp4", held(("red",), 5))
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.geteuid() == 0:  # root writes in any mode-locked folder; sysfs refuses new files even to root
        locked = Path("/sys")
    run = str(trained_run)
    cases = [
        ([run, "--source", str(tmp_path / "missing.mp4")], "no such file"),
        ([run, "--source", str(empty)], "empty file"),
        ([run, "--source", str(text)], "not a video file"),
        ([run, "--source", str(noise)], "not a video file|no decodable frames"),
        ([run, "--source", "concat:/etc/passwd"], "pseudo-protocol"),
        ([run, "--source", str(clip), "--out", str(tmp_path / "no" / "dir" / "a.mp4")], "does not exist"),
        ([run, "--source", str(clip), "--out", str(tmp_path / "a.gif")], "unsupported extension"),
        ([run, "--source", str(clip), "--every", "2", "--fps", "5"], "not both"),
        ([run, "--source", str(clip), "--roi", "1,2,3"], "x,y,w,h"),
        ([run, "--source", "http://127.0.0.1:9/none", "--open-timeout-s", "1"], "cannot open video source"),
        ([run, "--source", "99"], "cannot open video source camera 99"),  # no such camera
        ([run, "--source", str(clip), "--jsonl", str(locked / "f.jsonl")], "cannot write in"),
        ([run, "--source", str(clip), "--out", str(clip / "a.mp4")], "is a file, not a folder"),
    ]
    for args, message in cases:
        code, _, err = run_cli(capsys, *args)
        assert code == 2, (args, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("imagerec: error:"), (args, err)
        assert any(m in lines[0] for m in message.split("|")), (args, err)


def test_silent_stream_times_out_on_the_cli(trained_run, capsys):
    with silent_server() as port:
        start = time.monotonic()
        code, _, err = run_cli(capsys, str(trained_run), "--source", f"rtsp://127.0.0.1:{port}/cam",
                               "--open-timeout-s", "1", "--read-timeout-s", "1")  # fmt: skip
    assert code == 2 and "127.0.0.1" in err and len(err.strip().splitlines()) == 1
    assert time.monotonic() - start < 10


def test_show_without_a_display_is_refused(trained_run, tmp_path, capsys, monkeypatch):
    clip = write_clip(tmp_path / "ok.mp4", held(("red",), 5))
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    code, _, err = run_cli(capsys, str(trained_run), "--source", str(clip), "--show")
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("imagerec: error: --show needs a display"), err
    import cv2

    if re.search(r"GUI:\s+NONE", cv2.getBuildInformation()):  # the default headless build
        monkeypatch.setenv("DISPLAY", ":99")
        code, _, err = run_cli(capsys, str(trained_run), "--source", str(clip), "--show")
        assert code == 2 and err.count("\n") == 1 and "this build is headless" in err, err
