"""Real-time classification of video files, cameras and network streams: ``Classifier.stream`` (a generator).

Three stages, so capture never waits for the model:

1. a *reader* thread hands frames on. Live sources (cameras, stream URLs) are captured in a supervised child process
   (:mod:`imagerec.video.capture`: killed when silent beyond the open/read timeouts, restarted with
   back-off when it drops, hangs or dies); the thread only takes the newest frame from it. Files, and streams forced
   to ``live=False``, are decoded by the thread itself: a file cannot hang on the network, and this saves two copies
   per frame. Live sources keep only the newest frame and count the stale ones dropped;
2. a *worker* thread crops the region of interest, converts BGR to RGB, runs the serving preprocessing
   (``classifier.preprocess`` = ``imagerec.data.images.load_image``) and classifies small batches
   (``classifier.predict_scores``: probabilities and the OOD score);
3. the caller's thread (this iterator) smooths (``classifier.smoother``), labels like every surface does
   (``classifier.answers``: top-k, ``unknown``, label sets), keeps the timeline, and yields each :class:`FrameResult`.

Example:
    >>> clf = Classifier.load("runs/fmnist")
    >>> with clf.stream("clip.mp4", every=2, smooth=0.6) as frames:
    ...     for r in frames:
    ...         print(r.frame, r.label, r.confidence)
    >>> frames.summary["segments"]
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from imagerec.prediction import UNKNOWN
from imagerec.settings import VideoConfig
from imagerec.video.capture import LiveCapture, back_off
from imagerec.video.config import FrameResult
from imagerec.video.sources import Source, VideoError, import_cv2, open_capture, parse_source

_END = object()
_WATCHDOG_GRACE_S = 2.0


@dataclass
class _Frame:
    index: int
    time_s: float
    image: np.ndarray
    classify: bool


class _LatestSlot:
    """A one-item mailbox for live sources: a new frame replaces an unread one (counted as dropped)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._items: list[Any] = []
        self.dropped = 0

    def put(self, item: Any) -> None:
        with self._cond:
            if self._items and self._items[-1] is not _END and item is not _END:
                self._items.pop()
                self.dropped += 1
            self._items.append(item)
            self._cond.notify()

    def get(self, timeout: float) -> Any:
        with self._cond:
            if not self._cond.wait_for(lambda: bool(self._items), timeout):
                raise queue.Empty
            return self._items.pop(0)

    def get_nowait(self) -> Any:
        with self._cond:
            if not self._items:
                raise queue.Empty
            return self._items.pop(0)


class VideoStream:
    """Iterator over :class:`FrameResult` of one source; ``summary`` is filled when it ends (or is stopped)."""

    def __init__(self, classifier, source: Any, config: VideoConfig):
        self.classifier = classifier
        self.source: Source = source if isinstance(source, Source) else parse_source(source)
        self.config = config.validate()
        self.live = self.source.live if config.live is None else config.live
        self.threshold: float | None = classifier.threshold_for(config.threshold)
        self.smoother = classifier.smoother(config.smooth)
        self.source_fps = 0.0
        self.frame_size: tuple[int, int] | None = None  # (width, height)
        self.summary: dict[str, Any] | None = None
        self._frames: Any = _LatestSlot() if self.live else queue.Queue(maxsize=2 * config.batch_size)
        self._capture: LiveCapture | None = None
        self._next_t = 0.0
        self._results: queue.Queue = queue.Queue(maxsize=8)
        self._stop = threading.Event()
        self._opened = threading.Event()
        self._heartbeat = time.monotonic()
        self._started = False
        self._ended_by = "end of source"
        self._reconnects = 0
        self._counts = {"read": 0, "classified": 0, "yielded": 0}
        self._last: tuple[str, float, list[tuple[str, float]]] = (UNKNOWN, 0.0, [])  # label, conf, top-k
        self._extra: tuple[float | None, str | None, list[str] | None] = (None, None, None)  # ood, reason, set
        self._segments: list[dict[str, Any]] = []
        self._t0 = 0.0
        self._recent: deque[float] = deque(maxlen=30)

    # lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> VideoStream:
        if not self._started:
            self._started = True
            self._t0 = self._heartbeat = time.monotonic()
            reader = self._capture_loop if self.source.live and self.live else self._read_loop
            threading.Thread(
                target=self._guard(reader, self._frames), name="imagerec-video-reader", daemon=True
            ).start()
            threading.Thread(
                target=self._guard(self._work_loop, self._results), name="imagerec-video-worker", daemon=True
            ).start()
        return self

    def stop(self, reason: str = "stopped") -> None:
        """Ask the stream to end after the frames already read; safe from a signal handler."""
        if not self._stop.is_set():
            self._ended_by = reason
            self._stop.set()

    close = stop

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def capture_pid(self) -> int | None:
        """Process id of the current capture process of a live source (None for files or between processes)."""
        return self._capture.pid if self._capture is not None else None

    def __enter__(self) -> VideoStream:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __iter__(self) -> VideoStream:
        return self.start()

    def __next__(self) -> FrameResult:
        if self.summary is not None:
            raise StopIteration
        self.start()
        while True:
            try:
                item = self._results.get(timeout=0.1)
            except queue.Empty:
                self._watchdog()
                continue
            if item is _END:
                self._finish()
                raise StopIteration
            if isinstance(item, BaseException):
                self._stop.set()
                self._finish()
                raise item
            return self._emit(*item)

    # reader thread ---------------------------------------------------------------------------------------
    def _guard(self, loop, out) -> Any:
        def run() -> None:
            try:
                loop()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread, raised there
                self._put(out, exc)

        return run

    def _put(self, out, item: Any) -> None:
        if isinstance(out, _LatestSlot):
            out.put(item)
            return
        while True:
            try:
                out.put(item, timeout=0.1)
                return
            except queue.Full:
                self._heartbeat = time.monotonic()  # waiting on the consumer is progress, not a stall

    def _touch(self) -> None:
        self._heartbeat = time.monotonic()

    def _frame(self, index: int, time_s: float, image: np.ndarray) -> _Frame:
        if self.frame_size is None:
            self.frame_size = (image.shape[1], image.shape[0])
            self._opened.set()
        classify = index % self.config.every == 0
        if self.config.fps > 0:
            classify = time_s + 1e-9 >= self._next_t
            if classify:
                self._next_t = max(self._next_t + 1.0 / self.config.fps, time_s)
        return _Frame(index, time_s, image, classify)

    def _capture_loop(self) -> None:
        capture = self._capture = LiveCapture(self.source, self.config, self._stop, self._touch)
        for index, captured_at, image in capture.frames():
            self.source_fps = capture.fps
            self._put(self._frames, self._frame(index, captured_at - self._t0, image))
        if capture.ended_by is not None:
            self._ended_by = capture.ended_by
        self._put(self._frames, _END)

    def _read_loop(self) -> None:
        cfg, attempt, index = self.config, 0, 0
        while not self._stop.is_set():
            cap = (
                open_capture(self.source, cfg.open_timeout_s, cfg.read_timeout_s)
                if index == 0
                else self._reopen()
            )
            if cap is None:
                break
            self._heartbeat = time.monotonic()
            if index == 0:
                fps = cap.get(import_cv2().CAP_PROP_FPS)
                self.source_fps = float(fps) if fps and 0 < fps < 1000 else 0.0
            while not self._stop.is_set():
                ok, image = cap.read()
                self._heartbeat = time.monotonic()
                if not ok or image is None:
                    break
                attempt = 0
                if self.live or not self.source_fps:
                    time_s = self._heartbeat - self._t0
                else:
                    time_s = index / self.source_fps
                self._put(self._frames, self._frame(index, time_s, image))
                index += 1
                self._counts["read"] = index
            cap.release()
            if index == 0:
                limit = cfg.read_timeout_s
                what = (
                    "a video file with no decodable frames"
                    if self.source.kind == "file"
                    else f"no frame within {limit:g} s"
                )
                raise VideoError(f"video source {self.source}: {what}")
            if not self.live or self._stop.is_set():
                break
            attempt += 1
            if attempt > cfg.reconnects:
                self._ended_by = f"source lost after {cfg.reconnects} reconnect attempts"
                break
            self._reconnects += 1
            back_off(attempt, self._stop, self._touch)
        self._put(self._frames, _END)

    def _reopen(self):
        try:
            return open_capture(self.source, self.config.open_timeout_s, self.config.read_timeout_s)
        except VideoError:  # a capture that is not opened: read() fails at once and the back-off continues
            return import_cv2().VideoCapture()

    # worker thread ---------------------------------------------------------------------------------------
    def _work_loop(self) -> None:
        cv2 = import_cv2()
        done = False
        while not done:
            try:
                batch = [self._frames.get(timeout=0.1)]
            except queue.Empty:
                continue
            while len(batch) < self.config.batch_size and batch[-1] is not _END:
                try:
                    batch.append(self._frames.get_nowait())
                except queue.Empty:
                    break
            for item in batch:
                if isinstance(item, BaseException):
                    raise item
            done = batch[-1] is _END
            frames: list[_Frame] = [f for f in batch if isinstance(f, _Frame)]
            chosen = [f for f in frames if f.classify]
            probs = iter(())
            if chosen:
                arrays = [
                    self.classifier.preprocess(cv2.cvtColor(self._crop(f.image), cv2.COLOR_BGR2RGB))
                    for f in chosen
                ]
                probs = iter(self.classifier.predict_scores(np.stack(arrays), self.config.embeddings))
            for f in frames:
                self._put(self._results, (f, next(probs) if f.classify else None))
        self._put(self._results, _END)

    def _crop(self, image: np.ndarray) -> np.ndarray:
        if self.config.roi is None:
            return image
        x, y, w, h = self.config.roi
        height, width = image.shape[:2]
        if x + w > width or y + h > height:
            raise VideoError(
                f"roi {x},{y},{w},{h} does not fit in the {width}x{height} frame; expected x+w <= {width}, y+h <= {height}"
            )
        return image[y : y + h, x : x + w]

    # caller's thread -------------------------------------------------------------------------------------
    def _watchdog(self) -> None:
        cfg = self.config
        limit = (
            cfg.read_timeout_s if self._opened.is_set() else cfg.open_timeout_s + cfg.read_timeout_s
        ) + _WATCHDOG_GRACE_S
        if time.monotonic() - self._heartbeat > limit:
            self._stop.set()
            self._finish()
            raise VideoError(
                f"video source {self.source}: no frame within {limit:g} s (the stream stalled); check it or raise --read-timeout-s"
            )

    def _emit(self, frame: _Frame, probs: np.ndarray | None) -> FrameResult:
        now = time.monotonic()
        self._counts["yielded"] += 1
        self._recent.append(now)
        span = now - self._recent[0] if len(self._recent) > 1 else 0.0
        rate = (len(self._recent) - 1) / span if span > 0 else 0.0
        if probs is not None:
            self._counts["classified"] += 1
            smoothed = self.smoother.update(probs)[None]
            answer = self.classifier.answers(smoothed, self.config.top_k, self.config.threshold)[0]
            self._last = (answer.label, answer.confidence, answer.top_k)
            self._extra = (answer.ood_score, answer.reason, answer.labels)
            self._timeline(answer.label, frame.time_s, answer.labels)
        image = frame.image if self.config.keep_images else None
        return FrameResult(frame.index, frame.time_s, *self._last, probs is not None, rate, image, *self._extra, probs)

    def _timeline(self, label: str, time_s: float, labels: list[str] | None) -> None:
        last = self._segments[-1] if self._segments else {}
        if last:
            last["end_s"] = time_s
        if last.get("label") != label or last.get("labels") != labels:  # multi-label: the set changed
            extra = {} if labels is None else {"labels": list(labels)}
            self._segments.append({"label": label, "start_s": time_s, "end_s": time_s, **extra})

    def _finish(self) -> None:
        if self.summary is not None:
            return
        wall = max(time.monotonic() - self._t0, 1e-9)
        step = 1.0 / self.source_fps if self.source_fps and not self.live else 0.0
        segments = [dict(s) for s in self._segments]
        if segments:
            segments[-1]["end_s"] += step
        for seg in segments:
            seg["start_s"], seg["end_s"] = round(seg["start_s"], 3), round(seg["end_s"], 3)
        dropped = self._frames.dropped if isinstance(self._frames, _LatestSlot) else 0
        reconnects, read = self._reconnects, self._counts["read"]
        if self._capture is not None:
            dropped += self._capture.dropped
            reconnects += self._capture.reconnects
            read = self._capture.frames_read
        self.summary = {
            "source": str(self.source),
            "live": self.live,
            "frame_size": list(self.frame_size) if self.frame_size else None,
            "source_fps": round(self.source_fps, 3),
            "frames_read": read,
            "frames_classified": self._counts["classified"],
            "frames_dropped": dropped,
            "frames_yielded": self._counts["yielded"],
            "wall_s": round(wall, 3),
            "processing_fps": round(self._counts["yielded"] / wall, 1),
            "reconnects": reconnects,
            "ended_by": self._ended_by,
            "segments": segments,
        }


def stream(classifier, source: Any, config: VideoConfig | None = None, **overrides: Any) -> VideoStream:
    """Classify a video file, camera index or stream URL; iterate the result for one :class:`FrameResult` per frame.

    Args:
        classifier: a loaded :class:`imagerec.Classifier`.
        source: a video file path, a camera index (``0``) or a stream URL. Not checked against pseudo-protocols:
            use :func:`imagerec.video.sources.check_cli_source` (the CLI does) or
            :func:`~imagerec.video.sources.validate_remote_source` for sources named by others.
        config: a :class:`VideoConfig`; keyword overrides (``every=2``, ``smooth=0.8``, ``roi=(0, 0, 64, 64)``,
            ``threshold=0.5``...) replace its fields.

    Returns:
        A :class:`VideoStream`: an iterator (and context manager) whose ``summary`` holds frames read/classified/
        dropped, processing FPS and the label timeline once it ends; ``stop()`` ends it cleanly.

    Raises:
        VideoError: bad settings at once; a source that cannot be opened, has no frames or stalls while iterating.
    """
    return VideoStream(classifier, source, VideoConfig.from_overrides(config, **overrides))


__all__ = ["UNKNOWN", "FrameResult", "VideoConfig", "VideoError", "VideoStream", "stream"]
