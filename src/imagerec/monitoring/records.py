"""Recording answers (``imagerec serve RUN --record DIR``, ``imagerec video RUN --record DIR``).

One JSON line per answered image, written off the request path by one background thread::

    DIR/records/records-20261207T071203-4242-0001.jsonl   rotating files (``rotate_mb``), one writer process each
    DIR/images/20261207/071203.123456-3f2a9c0d1e7b5a44.png  the pictures worth reviewing (``--record-images review``)

A record (:data:`FIELDS`)::

    {"time": 1796627523.123, "source": "serve", "model_version": "v2", "runtime": "keras", "label": "shirt",
     "confidence": 0.41, "top_k": [["shirt", 0.41], ["t-shirt", 0.37]], "ood_score": 31.2, "reason": null,
     "labels": null, "embedding": "<base64 float16>", "sha256": "3f2a...", "bytes": 812, "width": 28,
     "height": 28, "image": "images/20261207/071203.123456-3f2a9c0d1e7b5a44.png", "why": "low_confidence"}

Why JSON lines and not Parquet: a line is complete or absent, and a Parquet file is only readable once closed.
The writer keeps encoded lines in memory and hands them to the OS every ``flush_s`` (0.5 s) in one ``write`` of
whole lines to an unbuffered ``O_APPEND`` file, so a process killed at any moment leaves complete lines only and
loses at most the last half second (a power cut may still tear the last line: :func:`read_records` skips and
counts a torn line). A failed write (a full disk, no permission) stops recording with one log line and
``Recorder.error``; serving goes on.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import hashlib
import io
import json
import logging
import math
import os
import queue
import random
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imagerec.monitoring.caps import pictures, prune
from imagerec.monitoring.reading import Records, decode_embedding, iter_records, read_records
from imagerec.settings import RecordSettings

log = logging.getLogger("imagerec.monitoring")

FIELDS = (
    "time", "source", "model_version", "runtime", "label", "confidence", "top_k", "ood_score", "reason", "labels",
    "embedding", "sha256", "bytes", "width", "height", "image", "why",
)  # fmt: skip
#: Answers waiting for the writer thread; past this they are dropped (counted), never queued without bound.
MAX_PENDING = 20_000
#: Decoded frames (video, KServe pixels) waiting to be written as pictures; past this a record keeps no picture.
MAX_PENDING_FRAMES = 64
#: Encoded lines held before a write even when ``flush_s`` has not passed (bounds the memory of a burst).
MAX_BUFFER = 1 << 20
#: How often the writer thread wakes up to encode what arrived (see ``Recorder._loop``).
WAKE_S = 0.05
_LINE = (
    '{"time":%.6f,"source":%s,"model_version":%s,"runtime":%s,"label":%s,"confidence":%s,"top_k":[%s],'
    '"ood_score":%s,"reason":%s,"labels":%s,"embedding":%s,"sha256":%s,"bytes":%s,"width":%s,"height":%s,'
    '"image":%s,"why":%s}\n'
)
_TEXTS: dict[str, str] = {}  # JSON of the strings that repeat (labels, versions, runtimes, reasons)


def _text(value: str | None) -> str:
    if value is None:
        return "null"
    out = _TEXTS.get(value)
    if out is None:
        out = json.dumps(value)
        if len(_TEXTS) < 4096:
            _TEXTS[value] = out
    return out


def _number(value: float | None) -> str:
    """Six significant digits; null for None, NaN and infinities (JSON has none of them)."""
    return "null" if value is None or not math.isfinite(value) else f"{float(value):.6g}"


def _integer(value: int | None) -> str:
    return "null" if value is None else str(int(value))


@dataclass
class Observation:
    """One answer to record: what the caller knows when it answers (the writer thread does the rest).

    ``data`` is the uploaded file (hashed and sized always; kept as the picture when worth reviewing);
    ``array`` a decoded RGB or grey image (a video frame, KServe pixels) when there is no file.
    """

    prediction: Any  # imagerec.prediction.Prediction
    data: bytes | None
    embedding: np.ndarray | None
    model_version: str | None = None
    runtime: str | None = None
    source: str = "serve"
    time: float = field(default_factory=time.time)
    array: np.ndarray | None = None
    why: str | None = None  # set by Recorder.add
    size: tuple[int, int] | None = None  # (width, height) of ``array``, set by Recorder.add


def encode_embedding(embedding: np.ndarray | None) -> str | None:
    if embedding is None:
        return None
    return base64.b64encode(np.asarray(embedding, "<f2").tobytes()).decode("ascii")


class Recorder:
    """Append :class:`Observation` s to ``DIR`` from a background thread (see the module docstring).

    ``add`` never blocks, never raises and does no disk work: it is called on the server's event loop.
    ``state`` is ``recording``, ``failed`` (a write failed; ``error`` says why) or ``stopped``.
    """

    def __init__(
        self, root: str | os.PathLike, settings: RecordSettings | None = None, ood_limit: float | None = None
    ):
        self.root = Path(root)
        self.settings = (settings or RecordSettings()).validate()
        self.ood_limit = (
            ood_limit  # a picture is kept above this OOD score (the run's threshold); None: unused
        )
        self.pending: queue.SimpleQueue[Observation | None] = queue.SimpleQueue()
        self.written = 0
        self.dropped = 0
        self.kept: collections.deque[Path] = collections.deque()  # pictures on disk, oldest first
        self.error: str | None = None
        self.rng = random.Random()
        self._frames = 0  # decoded frames queued (MAX_PENDING_FRAMES)
        self._fd: int | None = None
        self._path: Path | None = None
        self._size = 0  # bytes in the current file
        self._lines: list[bytes] = []
        self._buffered = 0
        self._seq = 0
        self._thread: threading.Thread | None = None

    # --- the caller's side -----------------------------------------------------------------------------------------
    def start(self) -> Recorder:
        """Start the writer thread. A directory that cannot be written stops recording (``error``, one log
        line), never serving."""
        try:
            (self.root / "records").mkdir(parents=True, exist_ok=True)
            (self.root / "images").mkdir(parents=True, exist_ok=True)
            probe = self.root / "records" / f".probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            self._fail(f"cannot write to {self.root} ({exc.strerror or exc})")
            return self
        self.kept.extend(pictures(self.root))
        self._thread = threading.Thread(target=self._loop, name="imagerec-recorder", daemon=True)
        self._thread.start()
        return self

    def add(self, observation: Observation) -> None:
        """Queue one answer (dropped and counted when recording is off, failed or ``MAX_PENDING`` behind)."""
        if self.error is not None or self._thread is None or self.pending.qsize() >= MAX_PENDING:
            self.dropped += 1
            return
        why = observation.why = self.worth_keeping(observation.prediction)
        array = observation.array
        if array is not None:  # a frame is held only while it may become a picture
            observation.size = (int(array.shape[1]), int(array.shape[0]))
            if why is None or self.settings.images == "none" or self._frames >= MAX_PENDING_FRAMES:
                observation.array = None
            else:
                self._frames += 1
        self.pending.put(observation)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Write what is queued, close the file and stop the thread."""
        if self._thread is None:
            return
        self.pending.put(None)
        self._thread.join(timeout_s)
        self._thread = None

    @property
    def state(self) -> str:
        if self.error is not None:
            return "failed"
        return "recording" if self._thread is not None else "stopped"

    def worth_keeping(self, pred) -> str | None:
        """Why this answer's picture is worth a reviewer's look (None: it is not): an ``unknown`` answer (its
        reason), a confidence under ``low_confidence``, an OOD score over the run's threshold, or the random
        ``sample`` of the rest."""
        if pred.reason is not None:
            return pred.reason
        if pred.confidence < self.settings.low_confidence:
            return "low_confidence"
        ood = pred.ood_score
        if self.ood_limit is not None and ood is not None and ood > self.ood_limit:  # NaN compares False
            return "out_of_distribution"
        if self.settings.sample > 0 and self.rng.random() < self.settings.sample:
            return "sample"
        return None

    # --- the writer thread -----------------------------------------------------------------------------------------
    def _loop(self) -> None:
        """Wake every ``WAKE_S``, encode what arrived, hand the lines to the OS every ``flush_s``.

        Batches, not one wake-up per answer: the thread competes with the event loop for the GIL, and a thousand
        wake-ups a second cost the loop more than the encoding itself (bench/record_load.py). Not niced: a
        thread the OS deschedules while it holds the GIL stalls the event loop with it (priority inversion)."""
        flush_s = self.settings.flush_s
        last_flush, last_prune = time.monotonic(), 0.0  # prune once at start: caps hold from the first minute
        done = False
        while not done:
            time.sleep(WAKE_S)
            while True:
                try:
                    item = self.pending.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    done = True
                    break
                if self.error is not None:
                    self.dropped += 1  # queued before the failure was seen
                else:
                    self._guarded(self._write, item)
            now = time.monotonic()
            if done or now - last_flush >= flush_s or self._buffered >= MAX_BUFFER:
                self._guarded(self._flush)
                last_flush = now
            if done or now - last_prune >= 30.0:
                self._guarded(self._prune)
                last_prune = now
        self._close()

    def _guarded(self, fn, *args) -> None:
        if self.error is not None:
            return
        try:
            fn(*args)
        except OSError as exc:
            self._fail(f"{type(exc).__name__}: {exc.strerror or exc}")
            self._close()
        except Exception as exc:  # noqa: BLE001 - one odd answer (NaN confidence) costs its record, not the rest
            self.dropped += 1
            log.warning("recording: one record skipped (%s: %s)", type(exc).__name__, exc)

    def _fail(self, error: str) -> None:
        self.error = error
        log.error("recording to %s stopped: %s; serving goes on, nothing more is recorded", self.root, error)

    def _write(self, obs: Observation) -> None:
        if obs.array is not None:
            self._frames -= 1
        line = self.line_of(obs)
        self._lines.append(line)
        self._buffered += len(line)
        self.written += 1

    def line_of(self, obs: Observation) -> bytes:
        """The JSON line of ``obs`` (keeping its picture when it is worth reviewing), :data:`FIELDS` in order.

        Formatted from a template with the repeating strings (labels, versions) encoded once: a third of the
        cost of ``json.dumps`` of a dict, and this runs for every answer."""
        pred, data = obs.prediction, obs.data
        digest = hashlib.sha256(data).hexdigest() if data is not None else None
        width, height = _image_size(data) if data is not None else obs.size or (None, None)
        image = None
        if (
            obs.why is not None
            and self.settings.images != "none"
            and (data is not None or obs.array is not None)
        ):
            image, digest = self._keep_image(obs, digest)
        top_k = ",".join([f"[{_text(label)},{_number(score)}]" for label, score in pred.top_k])
        embedding = encode_embedding(obs.embedding)
        return (_LINE % (
            obs.time, _text(obs.source), _text(obs.model_version), _text(obs.runtime), _text(pred.label),
            _number(pred.confidence), top_k, _number(pred.ood_score), _text(pred.reason),
            "null" if pred.labels is None else json.dumps(list(pred.labels)),
            "null" if embedding is None else f'"{embedding}"', "null" if digest is None else f'"{digest}"',
            _integer(None if data is None else len(data)), _integer(width), _integer(height),
            "null" if image is None else json.dumps(image), _text(obs.why),
        )).encode()  # fmt: skip

    def _keep_image(self, obs: Observation, digest: str | None) -> tuple[str | None, str | None]:
        """Write the picture (a frame as PNG); returns its path relative to the root, and the digest."""
        if self.settings.max_images == 0:
            return None, digest
        while len(self.kept) >= self.settings.max_images:
            self.kept.popleft().unlink(missing_ok=True)
        stamp = time.strftime("%Y%m%d/%H%M%S", time.gmtime(obs.time)) + f".{int(obs.time % 1 * 1e6):06d}"
        if obs.data is not None:
            data, ext = obs.data, _extension(obs.data)
        else:
            from PIL import Image

            buf = io.BytesIO()
            Image.fromarray(np.asarray(obs.array).clip(0, 255).astype(np.uint8).squeeze()).save(
                buf, format="PNG"
            )
            data, ext = buf.getvalue(), "png"
            digest = hashlib.sha256(data).hexdigest()
        rel = f"images/{stamp}-{(digest or '')[:16]}.{ext}"
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)  # a reader never sees half a picture
        self.kept.append(path)
        return rel, digest

    def _flush(self) -> None:
        """Hand the buffered lines to the OS in one write of whole lines (a new file past ``rotate_mb``)."""
        if not self._lines:
            return
        data = b"".join(self._lines)
        self._lines, self._buffered = [], 0
        if self._fd is None or self._size + len(data) > self.settings.rotate_mb * 2**20:
            self._rotate()
        view = memoryview(data)
        try:
            while view:  # a short write happens only as a disk fills; the next write then raises ENOSPC
                view = view[os.write(self._fd, view) :]  # type: ignore[arg-type]
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)  # the lines written before stay whole: no torn last line
            raise
        self._size += len(data)

    def _rotate(self) -> None:
        self._close()
        self._seq += 1
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        self._path = self.root / "records" / f"records-{stamp}-{os.getpid()}-{self._seq:04d}.jsonl"
        self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._size = 0

    def _close(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None

    def _prune(self) -> None:
        """Drop the oldest pictures and record files past the caps on count, bytes and age."""
        prune(self.root, self.settings, keep=self._path if self._fd is not None else None)
        self.kept = collections.deque(p for p in self.kept if p.exists())


def _image_size(data: bytes) -> tuple[int | None, int | None]:
    """``(width, height)`` from the header: PNG, GIF and BMP read directly (the writer's hot path), others by
    PIL (the header only)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    if data[:4] == b"GIF8" and len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Exception:  # noqa: BLE001 - an answered image always opens; a size is a nicety
        return None, None


def _extension(data: bytes) -> str:
    for magic, ext in ((b"\x89PNG", "png"), (b"\xff\xd8", "jpg"), (b"GIF8", "gif"), (b"BM", "bmp"),
                       (b"RIFF", "webp"), (b"II*\x00", "tif"), (b"MM\x00*", "tif")):  # fmt: skip
        if data.startswith(magic):
            return ext
    return "img"


__all__ = [
    "FIELDS", "Observation", "Recorder", "Records", "decode_embedding", "encode_embedding", "iter_records", "prune",
    "read_records",
]  # fmt: skip
