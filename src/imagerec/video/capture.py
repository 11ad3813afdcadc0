"""Capture of live sources (cameras, network streams) in a supervised child process.

OpenCV/FFmpeg can block forever inside ``VideoCapture.read`` on a stream that accepts the connection and then sends
nothing, or that drops mid-stream (opencv/opencv#5730, #27091, opencv-python#788): a thread stuck there can be
neither interrupted nor killed. So each connection to a live source is one *child process* (the ``spawn`` start
method: TensorFlow is loaded in the parent, ``fork`` would copy its threads' locks) that opens the source, reads
frames and publishes them into a :class:`FrameChannel` in shared memory. The parent (:class:`LiveCapture`):

* kills the child when no frame arrives within ``read_timeout_s`` (``open_timeout_s + read_timeout_s`` while it
  opens) plus a short grace, or notices when it crashes or is killed;
* starts a new one with back-off (0.5 s, 1 s, 2 s, ... up to 8 s) up to ``reconnects`` consecutive times;
* keeps at most one unread frame: a newer frame replaces it (counted in ``dropped``). The channel is three frame
  slots (triple buffering): the child never waits for the parent and each frame is copied twice (into and out of
  shared memory, about 1 ms per 1080p frame).

Every stream has its own child, so a hung source stalls nothing else. Video files are read in a thread by
:mod:`imagerec.video.stream` (a file cannot hang on the network, and a thread needs no copies).

Programs that stream from a live source must guard their entry point with ``if __name__ == "__main__":`` (the
``spawn`` start method imports the main module in the child), as for any ``multiprocessing`` program.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing import shared_memory
from typing import Any

import numpy as np

from imagerec.settings import VideoConfig
from imagerec.utils import exit_with_parent
from imagerec.video.sources import Source, VideoError, import_cv2, open_capture

log = logging.getLogger(__name__)

#: Seconds the parent waits beyond the configured timeouts before it kills a silent child.
GRACE_S = 1.0
#: Seconds a child may take to start (import OpenCV) before it is killed.
START_LIMIT_S = 60.0
_FRAME = "f"  # the child's "a new frame is in the channel" message


def back_off(attempt: int, stop: threading.Event, tick: Callable[[], None]) -> None:
    """Wait before reconnect attempt ``attempt`` (1, 2, ...): 0.5, 1, 2, 4, 8, 8, ... s, or until ``stop`` is set."""
    end = time.monotonic() + min(8.0, 0.5 * 2 ** (attempt - 1))
    while time.monotonic() < end and not stop.wait(0.1):
        tick()


class FrameChannel:
    """Three frame slots in one buffer (triple buffering): the writer never waits, the reader gets the newest frame.

    At most one frame is unread (``pending``): publishing while one is unread replaces it and counts it in
    ``dropped``. Memory is fixed at three frames plus a 128-byte header, whatever the rates of writer and reader.
    """

    HEADER_BYTES = 128
    _BACK, _READY, _FRONT, _FRESH, _PUBLISHED, _DROPPED, _SEQ, _TIME = 0, 1, 2, 3, 4, 5, 6, 9

    def __init__(self, buffer: Any, lock: Any, shape: tuple[int, ...], dtype: Any):
        self.lock = lock
        self.header = np.ndarray((self.HEADER_BYTES // 8,), np.float64, buffer, 0)
        nbytes = self.frame_bytes(shape, dtype)
        self.slots = [np.ndarray(shape, dtype, buffer, self.HEADER_BYTES + i * nbytes) for i in range(3)]

    @staticmethod
    def frame_bytes(shape: tuple[int, ...], dtype: Any) -> int:
        return math.prod(shape) * np.dtype(dtype).itemsize

    @classmethod
    def size(cls, shape: tuple[int, ...], dtype: Any) -> int:
        """Bytes of buffer a channel of frames of ``shape`` and ``dtype`` needs."""
        return cls.HEADER_BYTES + 3 * cls.frame_bytes(shape, dtype)

    def reset(self) -> None:
        self.header[:] = 0
        self.header[[self._BACK, self._READY, self._FRONT]] = (0, 1, 2)

    @property
    def published(self) -> int:
        return int(self.header[self._PUBLISHED])

    @property
    def dropped(self) -> int:
        return int(self.header[self._DROPPED])

    @property
    def pending(self) -> int:
        return int(self.header[self._FRESH])

    def publish(self, image: np.ndarray, time_s: float) -> None:
        """Writer: copy ``image`` into the back slot, then make it the newest frame."""
        h = self.header
        back = int(h[self._BACK])
        np.copyto(self.slots[back], image)
        with self.lock:
            h[self._PUBLISHED] += 1
            h[self._SEQ + back], h[self._TIME + back] = h[self._PUBLISHED], time_s
            h[self._DROPPED] += h[self._FRESH]
            h[self._BACK], h[self._READY], h[self._FRESH] = h[self._READY], back, 1

    def take(self, lock_timeout_s: float = 1.0) -> tuple[int, float, np.ndarray] | None:
        """Reader: ``(sequence number from 1, capture time, a copy of the frame)`` of the newest unread frame."""
        h = self.header
        if not h[self._FRESH] or not self.lock.acquire(timeout=lock_timeout_s):
            return None  # nothing new, or a killed writer died holding the lock
        try:
            if not h[self._FRESH]:
                return None
            front = int(h[self._READY])
            h[self._READY], h[self._FRONT], h[self._FRESH] = h[self._FRONT], front, 0
        finally:
            self.lock.release()
        return int(h[self._SEQ + front]), float(h[self._TIME + front]), self.slots[front].copy()


# the child process -----------------------------------------------------------------------------------------------
def _child_main(
    conn, lock, target: int | str, kind: str, timeouts: tuple[float, float], parent_pid: int
) -> None:
    """One connection: open, report ``("opened", fps, shape, dtype)``, publish frames until the source ends."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the process group; the parent decides
    exit_with_parent(parent_pid)  # a child blocked inside FFmpeg would otherwise outlive a killed parent
    source, shm, cap, channel = Source(target, kind), None, None, None
    try:
        conn.send(("ready",))
        try:
            cap = open_capture(source, *timeouts)
        except VideoError as exc:
            conn.send(("end", str(exc)))
            return
        fps = cap.get(import_cv2().CAP_PROP_FPS)
        ok, image = cap.read()
        if not ok or image is None:
            conn.send(("end", f"video source {source}: no frame within {timeouts[1]:g} s"))
            return
        conn.send(("opened", float(fps or 0.0), image.shape, image.dtype.str))
        shm = shared_memory.SharedMemory(name=conn.recv())
        channel = FrameChannel(shm.buf, lock, image.shape, image.dtype)
        while ok and image is not None:
            if image.shape != channel.slots[0].shape:
                conn.send(("end", f"video source {source}: the frame size changed to {image.shape}"))
                return
            channel.publish(image, time.monotonic())
            conn.send(_FRAME)
            ok, image = cap.read()
        conn.send(
            ("end", f"video source {source}: the stream ended or sent no frame within {timeouts[1]:g} s")
        )
    except (EOFError, OSError):
        pass  # the parent went away or closed the connection
    finally:
        if cap is not None:
            cap.release()
        if shm is not None:
            del channel  # its views of the buffer must go before the buffer closes
            shm.close()


# the parent --------------------------------------------------------------------------------------------------------
class _Child:
    """One capture process and the parent's end of its pipe."""

    def __init__(self, ctx, source: Source, config: VideoConfig):
        self.conn, child_conn = ctx.Pipe()
        self.lock = ctx.Lock()  # a new lock per child: a killed child may die holding its lock
        timeouts = (config.open_timeout_s, config.read_timeout_s)
        self.proc = ctx.Process(
            target=_child_main,
            args=(child_conn, self.lock, source.target, source.kind, timeouts, os.getpid()),
            name="imagerec-video-capture",
            daemon=True,
        )
        self.proc.start()
        child_conn.close()
        self.deadline = time.monotonic() + START_LIMIT_S
        self.channel: FrameChannel | None = None
        self.taken = 0

    def receive(self, timeout: float) -> Any:
        """The next message, None when there is none within ``timeout``, ``("exit", code)`` once the child is gone."""
        try:
            if not self.conn.poll(timeout):
                return None
            return self.conn.recv()
        except (EOFError, OSError):
            self.proc.join(1.0)
            return ("exit", self.proc.exitcode)

    def close(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5.0)
        self.conn.close()


class LiveCapture:
    """Frames of one live source from supervised capture processes; iterate :meth:`frames`.

    Args:
        source: a camera or stream (``Source.live``).
        config: timeouts and ``reconnects`` are used.
        stop: set it to end :meth:`frames` (within about 0.1 s).
        tick: called at least every 0.1 s while the capture is supervised (a heartbeat for the caller).

    Attributes:
        fps, frame_size: of the first connection (``0.0`` / ``None`` before it).
        frames_read: frames the children read; ``dropped``: those the parent never took (the channel kept only the
            newest); ``reconnects``: new children started after a connection ended; ``ended_by``: why the capture
            ended when the source was lost (None otherwise); ``pid``: the current child's process id.
    """

    def __init__(self, source: Source, config: VideoConfig, stop: threading.Event, tick: Callable[[], None]):
        self.source, self.config, self._stop, self._tick = source, config, stop, tick
        self._ctx = multiprocessing.get_context("spawn")
        self._shm: shared_memory.SharedMemory | None = None
        self._child: _Child | None = None
        self._read_before = 0  # frames read by the children that have ended
        self._dropped_before = 0
        self.fps = 0.0
        self.frame_size: tuple[int, int] | None = None
        self.reconnects = 0
        self.ended_by: str | None = None

    @property
    def pid(self) -> int | None:
        return self._child.proc.pid if self._child is not None else None

    @property
    def frames_read(self) -> int:
        channel = self._child.channel if self._child is not None else None
        return self._read_before + (channel.published if channel is not None else 0)

    @property
    def dropped(self) -> int:
        channel = self._child.channel if self._child is not None else None
        return self._dropped_before + (channel.dropped if channel is not None else 0)

    def frames(self) -> Iterator[tuple[int, float, np.ndarray]]:
        """Yield ``(index, capture time on time.monotonic(), BGR image)``, reconnecting with back-off.

        Raises:
            VideoError: the first connection delivered no frame (unopenable, silent, crashed).
        """
        attempt = 0
        try:
            while not self._stop.is_set():
                got, reason = yield from self._connection()
                if self._stop.is_set():
                    break
                if self.frames_read == 0:
                    raise VideoError(reason)
                attempt = 1 if got else attempt + 1
                if attempt > self.config.reconnects:
                    self.ended_by = f"source lost after {self.config.reconnects} reconnect attempts"
                    log.warning("%s; %s", reason, self.ended_by)
                    break
                self.reconnects += 1
                log.warning(
                    "%s; reconnect attempt %d/%d after back-off", reason, attempt, self.config.reconnects
                )
                back_off(attempt, self._stop, self._tick)
        finally:
            self.close()

    def close(self) -> None:
        """Kill the current child and free the shared memory (``frames`` does it when it ends)."""
        self._end_child()
        if self._shm is not None:
            self._shm.close()
            self._shm.unlink()
            self._shm = None

    def _connection(self):
        child = self._child = _Child(self._ctx, self.source, self.config)
        got = 0
        try:
            while not self._stop.is_set():
                self._tick()
                reason = self._pump(child)
                frame = child.channel.take() if child.channel is not None else None
                if frame is not None:
                    child.taken, got = child.taken + 1, got + 1
                    seq, time_s, image = frame
                    yield self._read_before + seq - 1, time_s, image
                if reason is not None:
                    return got, reason
            return got, "stopped"
        finally:
            self._end_child()

    def _pump(self, child: _Child) -> str | None:
        """Handle the child's messages; the reason the connection ended, or None while it lasts."""
        cfg, timeout = self.config, 0.1
        while (msg := child.receive(timeout)) is not None:
            timeout = 0.0
            now = time.monotonic()
            if msg == _FRAME:
                child.deadline = now + cfg.read_timeout_s + GRACE_S
            elif msg[0] == "ready":
                child.deadline = now + cfg.open_timeout_s + cfg.read_timeout_s + GRACE_S
            elif msg[0] == "opened":
                self._opened(child, *msg[1:])
                child.deadline = now + cfg.read_timeout_s + GRACE_S
            elif msg[0] == "end":
                return msg[1]
            else:  # ("exit", code)
                return f"video source {self.source}: the capture process exited (code {msg[1]})"
        if time.monotonic() > child.deadline:
            limit = cfg.read_timeout_s if child.channel else cfg.open_timeout_s + cfg.read_timeout_s
            return f"video source {self.source}: no frame within {limit:g} s; the capture process was killed"
        return None

    def _opened(self, child: _Child, fps: float, shape: tuple[int, ...], dtype: str) -> None:
        if self.frame_size is None:
            self.frame_size = (shape[1], shape[0])
            self.fps = fps if 0 < fps < 1000 else 0.0
        size = FrameChannel.size(shape, dtype)
        if self._shm is None or self._shm.size < size:
            if self._shm is not None:
                self._shm.close()
                self._shm.unlink()
            self._shm = shared_memory.SharedMemory(create=True, size=size)
        child.channel = FrameChannel(self._shm.buf, child.lock, shape, dtype)
        child.channel.reset()
        child.conn.send(self._shm.name)

    def _end_child(self) -> None:
        child, self._child = self._child, None
        if child is None:
            return
        child.close()
        if child.channel is not None:
            self._read_before += child.channel.published
            self._dropped_before += child.channel.published - child.taken
            child.channel = None
