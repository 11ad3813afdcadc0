"""Decode isolation (``imagerec serve --decode-workers N``): uploaded images are decoded in worker processes.

Image decoders are C code; a memory-safety bug in one (SIGSEGV, SIGABRT) kills the process that runs it. With
``N >= 1`` the server decodes uploads in a ``ProcessPoolExecutor`` of ``N`` *spawned* processes that import only
``imagerec.data.images`` (numpy + PIL, no TensorFlow), so a crashing decoder costs one request, answered 503
``decoder_crashed``, and the pool is recreated for the next one. The worker runs the same ``load_image`` call as
``Classifier.preprocess``, so the ``uint8`` arrays are identical to in-process decoding.

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
    """

    def __init__(self, workers: int, image_size: tuple[int, int], channels: int, resize: str):
        self.workers = workers
        self.args = (tuple(image_size), channels, resize)
        self.crashes = 0
        self._lock = threading.Lock()
        self._closed = False
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

        pool = self._pool
        try:
            result = await asyncio.wrap_future(pool.submit(_decode, data, *self.args))
        except BrokenProcessPool:
            self._replace(pool)
            raise DecoderCrashed("an image decoder process crashed") from None
        if isinstance(result, _Failure):
            if result.kind == "rejected":
                raise ImageRejected(result.code, result.message)
            raise RuntimeError(f"decode failed: {result.code}: {result.message}")
        return result

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
            pool = self._pool
        pool.shutdown(wait=False, cancel_futures=True)
