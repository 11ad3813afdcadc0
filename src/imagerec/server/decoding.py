"""Decode isolation (``imagerec serve --decode-workers N``): uploaded images are decoded in worker processes.

Image decoders are C code; a memory-safety bug in one (SIGSEGV, SIGABRT) kills the process that runs it. With
``N >= 1`` the server decodes uploads in a ``ProcessPoolExecutor`` of ``N`` *spawned* processes that import only
``imagerec.data.images`` (numpy + PIL, no TensorFlow), so a crashing decoder costs one request, answered 503
``decoder_crashed``, and the pool is recreated for the next one. The worker runs the same ``load_image`` call as
``Classifier.preprocess``, so the ``uint8`` arrays are identical to in-process decoding.

Uploads travel to the workers in batches: while every worker is busy, new uploads wait on the event loop and go
together in the next round trip (like the model's dynamic batching, but with no added wait). One round trip per
upload cost ~0.3 ms of pickling, pipe and thread hops, on the event loop's and the model's GIL: measured 919 vs
1,044 requests/s and p99 53.6 vs 38.8 ms against in-process decoding (bench/RESULTS-serving.md). A crash fails the
requests of its batch (a broken pool fails every pending call in any case).

This module is imported by the worker processes: keep its top-level imports light.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import os
import sys
import threading
import types
from concurrent.futures.process import BrokenProcessPool
from typing import Any

_SPAWN_LOCK = threading.Lock()


class DecoderCrashed(Exception):
    """A decode worker process died (the pool was broken); the pool has been replaced."""


class _Failure:
    """An exception from the worker, passed back as plain data (``ImageRejected`` does not round-trip pickle,
    and an unpicklable result would break the whole pool)."""

    def __init__(self, kind: str, code: str, message: str):
        self.kind, self.code, self.message = kind, code, message


def _decode(data: bytes, image_size: tuple[int, int], channels: int, resize: str) -> Any:
    """In the worker: ``load_image`` on the uploaded bytes (looked up at call time, as ``preprocess`` does)."""
    from imagerec.data import images
    from imagerec.errors import ImageRejected

    try:
        return images.load_image(data, image_size, channels, resize)
    except ImageRejected as exc:
        return _Failure("rejected", exc.code, str(exc))
    except Exception as exc:  # noqa: BLE001 - becomes a 500 for this request only
        return _Failure("error", type(exc).__name__, str(exc)[:500])


def _decode_many(blobs: list[bytes], image_size: tuple[int, int], channels: int, resize: str) -> list[Any]:
    """In the worker: :func:`_decode` of each upload of a batch (one round trip for the batch)."""
    return [_decode(data, image_size, channels, resize) for data in blobs]


def _init_worker(parent_pid: int) -> None:
    from imagerec.utils import exit_with_parent

    exit_with_parent(parent_pid)  # a killed (or uncleanly stopped) server must not leave decoders behind


def _ping() -> int:
    import imagerec.data.images  # noqa: F401 - preload numpy + PIL so the first request is not slow

    return 0


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
        self.workers = workers
        self.args = (tuple(image_size), channels, resize)
        self.max_batch = max_batch
        self.crashes = 0
        self.batches = 0
        self._lock = threading.Lock()
        self._closed = False
        self._pending: list[tuple[bytes, asyncio.Future]] = []
        self._in_flight: set[asyncio.Future] = set()
        self._pool = self._new_pool()

    def _new_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        pool = concurrent.futures.ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(os.getpid(),),
        )
        # Start all the processes now (each submit to a pool without an idle worker spawns one), with a blank
        # ``__main__``: "spawn" would otherwise re-run the parent's main script in every worker (the ``imagerec``
        # CLI, or a user's script that builds the app without an ``if __name__ == "__main__"`` guard and would load
        # TensorFlow, or fail, in the child). The workers need nothing from ``__main__``.
        with _SPAWN_LOCK:
            main = sys.modules["__main__"]
            sys.modules["__main__"] = types.ModuleType("__main__")
            try:
                for _ in range(self.workers):
                    pool.submit(_ping)
            finally:
                sys.modules["__main__"] = main
        return pool

    def warm_up(self, timeout: float = 60.0) -> None:
        """Block until every worker has started and imported the decoder."""
        futures = [self._pool.submit(_ping) for _ in range(self.workers)]
        concurrent.futures.wait(futures, timeout)

    def _replace(self, broken: concurrent.futures.ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is not broken or self._closed:
                return  # another request already replaced it
            self.crashes += 1
            self._pool = self._new_pool()
        broken.shutdown(wait=False, cancel_futures=True)

    async def decode(self, data: bytes) -> Any:
        """The decoded ``uint8`` array of ``data``.

        Raises:
            ImageRejected: the image is not decodable (as in-process decoding would raise).
            DecoderCrashed: the worker process died while decoding (this or a concurrent request).
        """
        from imagerec.errors import ImageRejected

        future = asyncio.get_running_loop().create_future()
        self._pending.append((data, future))
        self._dispatch()
        result = await future
        if isinstance(result, _Failure):
            if result.kind == "rejected":
                raise ImageRejected(result.code, result.message)
            raise RuntimeError(f"decode failed: {result.code}: {result.message}")
        return result

    def _dispatch(self) -> None:
        """Send waiting uploads to idle workers, a batch each (event-loop thread only)."""
        while self._pending and len(self._in_flight) < self.workers and not self._closed:
            batch = [item for item in self._pending[: self.max_batch] if not item[1].done()]
            del self._pending[: self.max_batch]
            if not batch:
                continue
            pool = self._pool
            try:
                work = asyncio.wrap_future(pool.submit(_decode_many, [data for data, _ in batch], *self.args))
            except (BrokenProcessPool, RuntimeError) as exc:  # broken, or shut down by another request
                self._fail(pool, batch, exc)
                continue
            self._in_flight.add(work)
            self.batches += 1
            work.add_done_callback(lambda done, batch=batch, pool=pool: self._finished(done, batch, pool))

    def _finished(self, work: asyncio.Future, batch: list, pool) -> None:
        self._in_flight.discard(work)
        if work.cancelled() or work.exception() is not None:
            self._fail(pool, batch, None if work.cancelled() else work.exception())
        else:
            for (_, future), result in zip(batch, work.result(), strict=True):
                if not future.done():
                    future.set_result(result)
        self._dispatch()

    def _fail(self, pool, batch: list, exc: BaseException | None) -> None:
        if isinstance(exc, BrokenProcessPool):
            self._replace(pool)
            exc = DecoderCrashed("an image decoder process crashed")
        elif exc is None or self._closed:
            exc = DecoderCrashed("the decoder pool was shut down")
        for _, future in batch:
            if not future.done():
                future.set_exception(exc)

    def shutdown(self, wait_s: float = 0.0) -> None:
        """Stop the workers. ``wait_s > 0`` (the server's exit): wait that long for them to exit, so the pool's
        queues and their named semaphores are released now; uvicorn ends the process by re-raising SIGTERM,
        which skips the exit handlers that would release them (multiprocessing's resource_tracker then warns of
        "leaked semaphore objects")."""
        with self._lock:
            self._closed = True
            pool = self._pool
        if wait_s > 0:
            closer = threading.Thread(target=pool.shutdown, kwargs={"wait": True, "cancel_futures": True})
            closer.start()
            closer.join(wait_s)  # a worker stuck in a decode is not waited for beyond this
        else:
            pool.shutdown(wait=False, cancel_futures=True)
        for work in list(self._in_flight):
            work.cancel()  # its callers get DecoderCrashed (see _finished)
        for _, future in self._pending:
            if not future.done():
                future.cancel()
        self._pending.clear()
