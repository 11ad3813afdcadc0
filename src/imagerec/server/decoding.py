"""Decode isolation (``imagerec serve --decode-workers N``): uploaded images are decoded in worker processes.

Image decoders are C code; a memory-safety bug in one (SIGSEGV, SIGABRT) kills the process that runs it. With
``N >= 1`` the server decodes uploads in ``N`` *spawned* processes that import only ``imagerec.data.images``
(numpy, PIL, OpenCV; no TensorFlow), so a crashing decoder costs the requests of one batch, answered 503
``decoder_crashed``, and a fresh process takes its place. The worker runs the same ``load_image`` call as
``Classifier.preprocess``, so the ``uint8`` arrays are identical to in-process decoding.

Uploads travel to the workers in batches: while every worker is busy, new uploads wait on the event loop and go
together in the next round trip (like the model's dynamic batching, but with no added wait).

Each worker has two pipes and nothing else: the event loop writes a batch (length-prefixed byte strings) and reads
the answers with ``add_reader`` (no helper threads, no ``ProcessPoolExecutor`` call queue, feeder and manager
threads: those cost ~0.3 ms of pickling and thread hops per round trip on the GIL, and more than the decode of a
small upload). Nothing is unpickled from a worker: it answers raw pixels or an error code and message in a fixed
framing, so a worker taken over by a hostile image can send the server nothing but bytes.

This module is imported by the worker processes: keep its top-level imports light.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import select
import struct
import sys
import threading
import time
import types
from typing import Any

from imagerec.server import decode_framing as framing

log = logging.getLogger("imagerec.server")

_SPAWN_LOCK = threading.Lock()


class DecoderCrashed(Exception):
    """A decode worker process died; a fresh one has taken its place."""


def _decode(data: bytes, image_size: tuple[int, int], channels: int, resize: str) -> Any:
    """In the worker: ``load_image`` on the uploaded bytes (looked up at call time, as ``preprocess`` does)."""
    from imagerec.data import images
    from imagerec.errors import ImageRejected

    try:
        return images.load_image(data, image_size, channels, resize)
    except ImageRejected as exc:
        return framing.Failure("rejected", exc.code, str(exc))
    except Exception as exc:  # noqa: BLE001 - becomes a 500 for this request only
        return framing.Failure("error", type(exc).__name__, str(exc)[:500])


def _serve(requests, replies, parent_pid: int, args: tuple) -> None:
    """A worker process: answer each batch of uploads until the parent says stop (an empty batch) or goes away."""
    from imagerec.data import images, png  # numpy and PIL, loaded before the first upload
    from imagerec.utils import exit_with_parent

    exit_with_parent(parent_pid)  # a killed (or uncleanly stopped) server must not leave decoders behind
    png.warm_up()  # and OpenCV
    del images
    replies.send_bytes(b"")  # ready
    while True:
        try:
            payload = requests.recv_bytes()
        except (EOFError, OSError):
            return
        if not payload:
            return
        replies.send_bytes(
            framing.pack_results([_decode(blob, *args) for blob in framing.unpack_blobs(payload)])
        )


class _Worker:
    """One spawned decode process and the server's ends of its two pipes (requests out, answers in)."""

    def __init__(self, args: tuple):
        ctx = multiprocessing.get_context("spawn")
        request_in, self.requests = ctx.Pipe(duplex=False)
        self.out_fd = self.requests.fileno()
        os.set_blocking(self.out_fd, False)  # written by the event loop, never blocking it
        self.outbox = bytearray()  # what is still to be written to the worker
        self.answers, answer_out = ctx.Pipe(duplex=False)
        self.process = ctx.Process(
            target=_serve,
            args=(request_in, answer_out, os.getpid(), args),
            name="imagerec-decode",
            daemon=True,
        )
        # start with a blank ``__main__``: "spawn" would otherwise re-run the parent's main script in the worker
        # (the ``imagerec`` CLI, or a user's script that builds the app without an ``if __name__ == "__main__"``
        # guard and would load TensorFlow, or fail, in the child). The worker needs nothing from ``__main__``.
        with _SPAWN_LOCK:
            main = sys.modules["__main__"]
            sys.modules["__main__"] = types.ModuleType("__main__")
            try:
                self.process.start()
            finally:
                sys.modules["__main__"] = main
        request_in.close()
        answer_out.close()
        self.fd = self.answers.fileno()
        os.set_blocking(self.fd, False)  # read by the event loop, a chunk at a time
        self.buffer = bytearray()
        self.batch: list[tuple[bytes, asyncio.Future]] | None = None  # in flight
        self.ready = False  # its "ready" answer was read
        self.loop: asyncio.AbstractEventLoop | None = None  # where its reader is registered

    def frames(self, limit: int) -> list[bytearray]:
        """The complete frames in the buffer (taken out of it).

        Raises:
            framing.BadReply: a frame longer than ``limit`` bytes is announced.
        """
        out = []
        while len(self.buffer) >= 4:
            (size,) = framing.FRAME.unpack_from(self.buffer)
            start = 4
            if size == -1:
                if len(self.buffer) < 12:
                    break
                (size,) = struct.unpack_from("!Q", self.buffer, 4)
                start = 12
            if size < 0 or size > limit:
                raise framing.BadReply(f"a frame of {size} bytes")
            if len(self.buffer) < start + size:
                break
            out.append(self.buffer[start : start + size])
            del self.buffer[: start + size]
        return out

    def send(self, payload: bytes) -> None:
        """Queue one frame (``Connection.send_bytes``' framing) and write what the pipe takes now; the rest is
        written as it drains (``add_writer``), so a worker still starting or busy never blocks the event loop.

        Raises:
            OSError: the worker is gone (its end of the pipe is closed).
        """
        if len(payload) < 0x7FFFFFFF:
            header = framing.FRAME.pack(len(payload))
        else:
            header = framing.FRAME.pack(-1) + struct.pack("!Q", len(payload))
        self.outbox += header + payload
        self.flush()

    def flush(self) -> None:
        while self.outbox:
            try:
                written = os.write(self.out_fd, self.outbox)
            except BlockingIOError:
                break
            del self.outbox[:written]
        if self.loop is not None and not self.loop.is_closed():
            if self.outbox:
                self.loop.add_writer(self.out_fd, self._drain)
            else:
                self.loop.remove_writer(self.out_fd)

    def _drain(self) -> None:
        try:
            self.flush()
        except OSError:  # gone: its reader sees the end of file and the pool replaces it
            self.outbox.clear()
            if self.loop is not None:
                self.loop.remove_writer(self.out_fd)

    def watch(self, loop: asyncio.AbstractEventLoop, on_readable) -> None:
        """Have ``loop`` call ``on_readable(self)`` when an answer arrives (once per loop)."""
        if self.loop is not loop:
            self.unwatch()
            self.loop = loop
            loop.add_reader(self.fd, on_readable, self)

    def unwatch(self) -> None:
        if self.loop is not None and not self.loop.is_closed():
            self.loop.remove_reader(self.fd)
            self.loop.remove_writer(self.out_fd)
        self.loop = None

    def close(self) -> None:
        self.unwatch()
        for conn in (self.requests, self.answers):
            conn.close()

    def kill(self) -> None:
        """End the process now (crashed, stopped or misbehaving) and close the pipes."""
        if self.process.is_alive():
            self.process.kill()
        self.close()


class DecodePool:
    """``workers`` spawned decode processes; :meth:`decode` is awaited from the event loop.

    Args:
        workers: number of processes (>= 1).
        image_size, channels, resize: the classifier's ``load_image`` arguments.
        max_batch: most uploads per round trip to a worker.
    """

    def __init__(
        self, workers: int, image_size: tuple[int, int], channels: int, resize: str, max_batch: int = 64
    ):
        self.args = (tuple(image_size), channels, resize)
        self.max_batch = max_batch
        self.crashes = 0
        self.batches = 0
        self._closed = False
        self._pending: list[tuple[bytes, asyncio.Future]] = []
        self._workers = [_Worker(self.args) for _ in range(workers)]
        self._stopping: list[_Worker] = []  # stopped or replaced: reaped by join()
        size = tuple(image_size)
        self._shape = (size[0], size[1], channels)
        # the longest answer a batch can have: its arrays plus their headers and room for error messages
        self._max_frame = max_batch * (size[0] * size[1] * channels + 4200) + 1024

    @property
    def workers(self) -> int:
        return len(self._workers)

    def warm_up(self, timeout: float = 60.0) -> None:
        """Block until every worker has started and imported the decoder (its "ready" answer is waiting)."""
        deadline = time.monotonic() + timeout
        for worker in list(self._workers):
            if worker.ready or worker.buffer or worker.batch is not None:
                continue
            select.select([worker.fd], [], [], max(0.0, deadline - time.monotonic()))

    async def decode(self, data: bytes) -> Any:
        """The decoded ``uint8`` array of ``data``.

        Raises:
            ImageRejected: the image is not decodable (as in-process decoding would raise).
            DecoderCrashed: the worker process died while decoding (this or a concurrent request).
        """
        from imagerec.errors import ImageRejected

        future = asyncio.get_running_loop().create_future()
        if self._closed:
            raise DecoderCrashed("the decoder pool was shut down")
        self._pending.append((data, future))
        self._dispatch()
        result = await future
        if isinstance(result, framing.Failure):
            if result.kind == "rejected":
                raise ImageRejected(result.code, result.message)
            raise RuntimeError(f"decode failed: {result.code}: {result.message}")
        return result

    def _dispatch(self) -> None:
        """Send waiting uploads to idle workers, a batch each (event-loop thread only)."""
        for worker in list(self._workers):
            if not self._pending or self._closed:
                return
            if worker.batch is not None or worker not in self._workers:
                continue
            batch = [item for item in self._pending[: self.max_batch] if not item[1].done()]
            del self._pending[: self.max_batch]
            if not batch:
                continue
            worker.watch(asyncio.get_running_loop(), self._readable)
            try:
                worker.send(framing.pack_blobs([data for data, _ in batch]))
            except OSError:  # it died while idle: nothing of this batch reached it, so the batch waits again
                self._pending[:0] = batch
                self._replace(worker, None)
                return  # _replace dispatched the queue to the replacement
            worker.batch = batch
            self.batches += 1

    def _readable(self, worker: _Worker) -> None:
        try:
            chunk = os.read(worker.fd, 1 << 20)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:  # end of file: the process died
            self._replace(worker, DecoderCrashed("an image decoder process crashed"))
            return
        worker.buffer += chunk
        try:
            for frame in worker.frames(self._max_frame):
                if not frame:
                    worker.ready = True
                    continue
                batch = worker.batch or []
                results = framing.unpack_results(frame, len(batch), self._shape)
                worker.batch = None
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        except framing.BadReply as exc:
            self._replace(worker, DecoderCrashed(f"an image decoder process answered garbage ({exc})"))
            return
        self._dispatch()

    def _replace(self, worker: _Worker, error: DecoderCrashed | None) -> None:
        """A worker died or misbehaved: fail its batch with ``error``, end it, put a fresh one in its place."""
        batch, worker.batch = worker.batch, None
        for _, future in batch or []:
            if not future.done():
                future.set_exception(error or DecoderCrashed("an image decoder process crashed"))
        worker.kill()
        self._stopping = [w for w in self._stopping if w.process.is_alive()] + [worker]  # reaped by join()
        if worker not in self._workers or self._closed:
            return
        index = self._workers.index(worker)
        self.crashes += 1
        try:
            self._workers[index] = _Worker(self.args)
        except OSError:  # no process can start (memory, open files): fewer workers, the others go on
            log.exception("could not start a decode process")
            del self._workers[index]
            if not self._workers:
                for _, future in self._pending:
                    if not future.done():
                        future.set_exception(DecoderCrashed("no decode process could be started"))
                self._pending.clear()
        self._dispatch()

    def close(self) -> None:
        """Tell the workers to stop; waiting and in-flight uploads fail with :class:`DecoderCrashed`. Call it on
        the event loop's thread, or with no loop running; :meth:`join` waits for the processes."""
        self._closed = True
        error = DecoderCrashed("the decoder pool was shut down")
        workers, self._workers = self._workers, []
        for worker in workers:
            worker.outbox.clear()
            try:
                # stop: a worker busy in a decode reads it after
                os.write(worker.out_fd, framing.FRAME.pack(0))
            except OSError:
                pass
            for _, future in worker.batch or []:
                if not future.done():
                    future.set_exception(error)
            worker.batch = None
            worker.close()
            self._stopping.append(worker)
        for _, future in self._pending:
            if not future.done():
                future.set_exception(error)
        self._pending.clear()

    def join(self, wait_s: float = 0.0) -> None:
        """Wait up to ``wait_s`` for the stopped workers to exit; kill those still running (a decode stuck in C)."""
        deadline = time.monotonic() + wait_s
        for worker in self._stopping:
            if wait_s > 0:
                worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(1.0)

    def shutdown(self, wait_s: float = 0.0) -> None:
        """:meth:`close`, then :meth:`join` for ``wait_s``."""
        self.close()
        self.join(wait_s)
