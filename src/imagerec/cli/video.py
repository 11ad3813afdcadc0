"""``imagerec video RUN --source SRC``: real-time classification of a video file, camera or stream."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from imagerec.cli.app import app
from imagerec.cli.options import option
from imagerec.settings import RUNTIME, RecordSettings, VideoConfig

DEFAULTS = VideoConfig()  # the help texts name these; the options stay None (= the default)


def _roi(text: str | None) -> tuple[int, int, int, int] | None:
    from imagerec.video.sources import VideoError

    if not text:
        return None
    try:
        x, y, w, h = (int(v) for v in text.split(","))
    except ValueError:
        raise VideoError(f"--roi {text!r}: expected four integers x,y,w,h (e.g. 40,20,160,120)") from None
    return (x, y, w, h)


@app.command("video")
def video(
    run: Path = typer.Argument(..., help="Run directory written by 'imagerec train'."),
    source: str = typer.Option(
        ..., "--source", "-s", help="Video file, camera index (0) or stream URL (rtsp://, http:// MJPEG)."
    ),
    out: Path = typer.Option(None, "--out", "-o", help="Annotated video to write (.mp4, .mov, .mkv, .avi)."),
    jsonl: Path = typer.Option(
        None,
        "--jsonl",
        help="JSON lines, one per classified frame: frame, time_s, label, confidence, top_k (labels: a multi-label "
        "run's set).",
    ),
    every: int = typer.Option(
        None, "--every", help="Classify every N-th frame (others carry the last label)."
    ),
    fps: float = typer.Option(None, "--fps", help="Classify at most F frames per second of video."),
    smooth: float = typer.Option(
        None, "--smooth", help=f"EMA smoothing in [0, 1): 0 = off (default {DEFAULTS.smooth})."
    ),
    roi: str = typer.Option(None, "--roi", help="Region classified, x,y,w,h in pixels."),
    threshold: float = typer.Option(
        None, "--threshold", help="Answer 'unknown' below this confidence (0 = off)."
    ),
    top_k: int = typer.Option(
        None, "--top-k", help=f"(label, score) pairs per frame (default {DEFAULTS.top_k})."
    ),
    batch_size: int = typer.Option(
        None, "--batch-size", help=f"Most frames per model call (default {DEFAULTS.batch_size})."
    ),
    runtime: str = typer.Option(
        RUNTIME,
        "--runtime",
        help="auto (the fastest of keras and the exports that answer like it) | auto-quantized | keras | tflite | onnx (exports must exist).",
    ),
    show: bool = typer.Option(False, "--show", help="Show a window (needs a GUI build of OpenCV)."),
    allow_any_source: bool = typer.Option(
        False, "--allow-any-source", help="Also open FFmpeg pseudo-protocols and playlists."
    ),
    open_timeout_s: float = typer.Option(
        None, "--open-timeout-s", help=f"Seconds to open the source (default {DEFAULTS.open_timeout_s:g})."
    ),
    read_timeout_s: float = typer.Option(
        None,
        "--read-timeout-s",
        help=f"Seconds without a frame before giving up (default {DEFAULTS.read_timeout_s:g}).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    record: Path = typer.Option(
        None,
        "--record",
        help="Record every classified frame to this folder (JSON lines: label, scores, OOD score, embedding) and "
        "keep the frames worth reviewing as PNG; a folder that cannot be written stops recording, not the video.",
    ),
    record_images: str = option(
        RecordSettings,
        "images",
        "--record-images",
        help="With --record: review (keep unknown, low-confidence, out-of-distribution frames and a 1% sample) | "
        "none (no pixels stored).",
    ),
) -> None:
    """Classify frames of a video file, camera or stream; write an annotated video and JSON lines; print a summary."""
    from imagerec.classifier import Classifier
    from imagerec.video.output import check_output, format_summary, run_video
    from imagerec.video.recording import FrameRecording
    from imagerec.video.sources import check_cli_source

    config = VideoConfig.from_overrides(
        every=every, fps=fps, smooth=smooth, roi=_roi(roi), threshold=threshold, top_k=top_k,
        batch_size=batch_size, open_timeout_s=open_timeout_s, read_timeout_s=read_timeout_s,
    )  # fmt: skip
    check_cli_source(source, allow_any=allow_any_source)  # before the model loads: bad input fails fast
    for path in (out, jsonl):
        if path is not None:
            check_output(path)
    RecordSettings(images=record_images).validate()
    classifier = Classifier.load(run, runtime=runtime)
    recording = FrameRecording(classifier, record, record_images, config.roi) if record else None
    try:
        summary = run_video(
            classifier, source, out=out, jsonl=jsonl, show=show, allow_any_source=allow_any_source,
            config=config.replace(embeddings=recording is not None), on_frame=recording,
        )  # fmt: skip
    finally:
        if recording is not None:
            recording.close()
    if recording is not None:
        summary["outputs"]["record"] = f"{record} ({recording.recorder.written} records, {recording.recorder.state})"
    typer.echo(json.dumps(summary, indent=2) if as_json else format_summary(summary))
