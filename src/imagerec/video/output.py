"""Outputs of ``imagerec video``: the annotated video, JSON lines, a live window, and a clean stop on signals.

The annotated video is written to a hidden temporary name beside the target and renamed when it is complete, so a
half-written file never sits at the final path. JSON lines are flushed one by one. SIGINT/SIGTERM stop the stream
after the frames already read, and every output is still closed properly (a valid MP4, a complete JSONL).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from imagerec.video.sources import VideoError, check_cli_source, import_cv2
from imagerec.video.stream import FrameResult, VideoConfig, VideoStream, stream

#: container suffix -> OpenCV fourcc, the fallback when no ffmpeg with libx264 is installed
FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG"}
#: containers written as H.264 through ffmpeg (browsers play H.264 in MP4, not OpenCV's MPEG-4 Part 2 "mp4v")
H264_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv")


def ffmpeg_with_x264() -> str | None:
    """The path of an ``ffmpeg`` that has the libx264 encoder (Debian's has), or None."""
    exe = shutil.which("ffmpeg")
    if exe is None:
        return None
    try:
        found = subprocess.run(
            [exe, "-hide_banner", "-encoders"], capture_output=True, text=True, timeout=20, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return exe if " libx264 " in found else None


def check_output(path: str | os.PathLike, suffixes: tuple[str, ...] | None = None) -> Path:
    """Fail early (before any frame is read) when ``path`` cannot be written."""
    out = Path(path)
    if suffixes and out.suffix.lower() not in suffixes:
        raise VideoError(
            f"output {out}: unsupported extension {out.suffix or '(none)'!r}; expected one of {', '.join(suffixes)}"
        )
    if out.is_dir():
        raise VideoError(f"output {out} is a directory; expected a file name")
    parent = out.parent if str(out.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise VideoError(f"output {out}: {parent} is a file, not a folder; choose a path inside a folder")
    if not parent.is_dir():
        raise VideoError(f"output {out}: folder {parent} does not exist; create it first")
    probe = parent / f".{out.name}.probe-{os.getpid()}"
    try:
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise VideoError(
            f"output {out}: cannot write in {parent} ({exc.strerror or exc}); choose a writable path"
        ) from None
    return out


class AnnotatedWriter:
    """Writes annotated frames to ``.<name>.partial-<pid><suffix>`` and renames it to ``path`` on :meth:`close`.

    MP4/MOV/MKV are encoded as H.264 (yuv420p, faststart: plays in browsers) by an ``ffmpeg`` child fed raw BGR
    frames through a pipe; without an ffmpeg that has libx264, OpenCV writes MPEG-4 Part 2 and :attr:`note` says
    so. AVI is Motion-JPEG through OpenCV.
    """

    def __init__(self, path: Path, fps: float):
        self.path = path
        self.fps = fps if fps and fps > 0 else 30.0
        self.tmp = path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")
        self._writer = None
        self._ffmpeg: subprocess.Popen | None = None
        self.frames = 0
        self.codec: str | None = None
        self.note: str | None = None

    def _open(self, width: int, height: int) -> None:
        exe = ffmpeg_with_x264() if self.path.suffix.lower() in H264_SUFFIXES else None
        if exe is not None:
            # libx264 with yuv420p needs even sides: pad by one pixel where needed. ultrafast: 2.3x the frames/s
            # of veryfast for ~1.5x the bytes (measured, 320x240): the annotated video must keep up with the stream
            command = [
                exe, "-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "bgr24",
                "-s", f"{width}x{height}", "-r", f"{self.fps:g}", "-i", "-",
                "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-c:v", "libx264", "-preset", "ultrafast",
                "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(self.tmp),
            ]  # fmt: skip
            # its own process group: a Ctrl-C in the terminal reaches imagerec, which then finishes the file;
            # ffmpeg must not stop first. If imagerec dies, ffmpeg reads EOF and exits by itself.
            self._ffmpeg = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                process_group=0,
            )
            self.codec = "h264"
            return
        cv2 = import_cv2()
        fourcc = FOURCC[self.path.suffix.lower()]
        self._writer = cv2.VideoWriter(
            str(self.tmp), cv2.VideoWriter_fourcc(*fourcc), self.fps, (width, height)
        )
        if not self._writer.isOpened():
            self._writer = None
            self.tmp.unlink(missing_ok=True)
            raise VideoError(f"output {self.path}: OpenCV cannot write {self.path.suffix} video here")
        self.codec = fourcc
        if self.path.suffix.lower() in H264_SUFFIXES:
            self.note = (
                f"{self.path.name}: written as MPEG-4 Part 2 (mp4v), which browsers do not play; install ffmpeg "
                "with libx264 (Debian: apt-get install ffmpeg) to get H.264"
            )

    def write(self, image: np.ndarray) -> None:
        if self._writer is None and self._ffmpeg is None:
            self._open(image.shape[1], image.shape[0])
        if self._ffmpeg is not None:
            try:
                self._ffmpeg.stdin.write(np.ascontiguousarray(image, dtype=np.uint8).tobytes())  # type: ignore[union-attr]
            except BrokenPipeError:
                raise VideoError(f"output {self.path}: ffmpeg stopped: {self._ffmpeg_error()}") from None
        else:
            self._writer.write(image)  # type: ignore[union-attr]
        self.frames += 1

    def _ffmpeg_error(self) -> str:
        """Close ffmpeg's input, wait for it to finish the file; its last error line, or "" on success."""
        proc = self._ffmpeg
        if proc is None:
            return ""
        self._ffmpeg = None
        try:
            _, err = proc.communicate(timeout=120)  # closes ffmpeg's input: it finishes the file
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if not proc.returncode:
            return ""
        lines = err.decode(errors="replace").strip().splitlines()
        return (lines or [f"exit code {proc.returncode}"])[-1][:300]

    def close(self, keep: bool = True) -> bool:
        """Finish the file; rename it into place when ``keep`` and at least one frame was written."""
        failed = ""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if self._ffmpeg is not None:
            failed = self._ffmpeg_error()
        if keep and self.frames and not failed:
            os.replace(self.tmp, self.path)
            return True
        self.tmp.unlink(missing_ok=True)
        if keep and failed:
            raise VideoError(f"output {self.path}: ffmpeg failed: {failed}")
        return False


def draw(image: np.ndarray, result: FrameResult, roi: tuple[int, int, int, int] | None) -> np.ndarray:
    """Draw the label (a multi-label run: the label set), confidence and processing FPS (and the ROI box) on
    ``image`` in place."""
    cv2 = import_cv2()
    height, width = image.shape[:2]
    scale = max(0.3, min(1.2, width / 640))
    thick = max(1, round(scale * 2))
    lines = [f"{result.shown} {result.confidence:.0%}", f"{result.processing_fps:.0f} fps"]
    line_h = int(22 * scale) + 4
    text_w = max(cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, 0.6 * scale, thick)[0][0] for t in lines)
    box_w = min(width, max(int(230 * scale), text_w) + 8)
    cv2.rectangle(image, (0, 0), (box_w, line_h * len(lines) + 4), (0, 0, 0), -1)
    for i, text in enumerate(lines):
        cv2.putText(
            image,
            text,
            (4, line_h * (i + 1) - 4),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.6 * scale,
            (255, 255, 255),
            thick,
            cv2.LINE_AA,
        )
    if roi is not None:
        x, y, w, h = roi
        cv2.rectangle(image, (x, y), (x + w - 1, y + h - 1), (0, 255, 255), thick)
    return image


@contextlib.contextmanager
def stop_on_signals(video: VideoStream) -> Iterator[None]:
    """While inside, SIGINT and SIGTERM call ``video.stop()`` (outputs are then completed, not cut off)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    names = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}
    previous = {sig: signal.getsignal(sig) for sig in names}

    def handler(signum, _frame) -> None:
        if video.stopping:  # a second Ctrl-C: the user does not want to wait any more
            raise KeyboardInterrupt
        video.stop(f"stopped by {names.get(signum, signum)}")

    for sig in names:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def check_show() -> None:
    """Refuse ``--show`` (one line) where no window can open, before OpenCV tries.

    On Linux a GUI build of OpenCV (Qt) aborts the whole process when there is no display, so the display is
    checked first; a headless build raises ``cv2.error`` on ``namedWindow``.
    """
    display = os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    if sys.platform.startswith("linux") and not display:
        raise VideoError(
            "--show needs a display, but neither DISPLAY nor WAYLAND_DISPLAY is set (a server, container or SSH "
            "session without X forwarding); drop --show and write the annotated video with --out"
        )
    cv2 = import_cv2()
    try:
        cv2.namedWindow("imagerec", cv2.WINDOW_NORMAL)
    except cv2.error:
        raise VideoError(
            "--show needs OpenCV with GUI support and a display (pip install opencv-python); this build is headless"
        ) from None


def run_video(
    classifier,
    source: Any,
    out: str | os.PathLike | None = None,
    jsonl: str | os.PathLike | None = None,
    show: bool = False,
    allow_any_source: bool = False,
    config: VideoConfig | None = None,
    on_frame: Callable[[FrameResult], None] | None = None,
) -> dict[str, Any]:
    """``imagerec video``: classify ``source``, write the optional outputs, return the summary.

    ``on_frame`` is called with every result, its frame attached (``video --record`` keeps some of them).

    Raises:
        VideoError: refused/unopenable/stalled source, unwritable output, bad settings.
    """
    cfg = (config or VideoConfig()).validate()
    src = check_cli_source(source, allow_any=allow_any_source)
    out_path = check_output(out, tuple(FOURCC)) if out else None
    jsonl_path = check_output(jsonl) if jsonl else None
    if show:
        check_show()
    need_images = bool(out_path or show)
    video = stream(classifier, src, cfg, keep_images=need_images or on_frame is not None)
    writer: AnnotatedWriter | None = None
    ok = False
    cv2 = import_cv2() if need_images else None
    try:
        with contextlib.ExitStack() as stack:
            lines = stack.enter_context(jsonl_path.open("w", encoding="utf-8")) if jsonl_path else None
            stack.enter_context(stop_on_signals(video))
            for result in video:
                if lines is not None and result.classified:
                    lines.write(json.dumps(result.to_dict()) + "\n")
                    lines.flush()
                if need_images and result.image is not None:
                    image = draw(result.image, result, cfg.roi)
                    if out_path is not None:
                        if writer is None:
                            writer = AnnotatedWriter(out_path, video.source_fps)
                        writer.write(image)
                    if show:
                        cv2.imshow("imagerec", image)  # type: ignore[union-attr]
                        if cv2.waitKey(1) & 0xFF in (ord("q"), 27):  # type: ignore[union-attr]
                            video.stop("stopped by the user")
                if on_frame is not None:
                    on_frame(result)
        ok = True
    except OSError as exc:
        raise VideoError(f"writing outputs failed: {exc.strerror or exc}") from None
    finally:
        if writer is not None:
            writer.close(keep=ok)
        if show and cv2 is not None:
            cv2.destroyAllWindows()
    summary = dict(video.summary or {})
    if writer is not None and writer.note:
        summary["notes"] = [writer.note]
    summary["outputs"] = {
        k: str(v)
        for k, v in (("video", out_path), ("jsonl", jsonl_path))
        if v is not None and (k != "video" or ok)
    }
    return summary


def format_summary(summary: dict[str, Any], max_segments: int = 20) -> str:
    """The summary as a few human lines (the CLI prints this; ``--json`` prints the dict)."""
    lines = [
        f"source {summary['source']}: {summary['frames_read']} frames read, {summary['frames_classified']} classified, "
        f"{summary['frames_dropped']} dropped; {summary['processing_fps']} frames/s processing over {summary['wall_s']} s"
        f" ({summary['ended_by']})",
    ]
    segs = summary.get("segments") or []
    for seg in segs[:max_segments]:
        shown = " + ".join(seg["labels"]) if seg.get("labels") else seg["label"]
        lines.append(f"  {seg['start_s']:8.2f} - {seg['end_s']:8.2f} s  {shown}")
    if len(segs) > max_segments:
        lines.append(f"  ... {len(segs) - max_segments} more segments (see --json)")
    for kind, path in summary.get("outputs", {}).items():
        lines.append(f"wrote {kind}: {path}")
    lines.extend(f"note: {note}" for note in summary.get("notes", []))
    return "\n".join(lines)
