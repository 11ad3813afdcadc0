"""Dynamic batching: concurrent requests share one model call.

Requests put one preprocessed image each on a bounded ``asyncio.Queue``. One consumer task takes the first waiting
image, then everything else already queued, and waits at most ``max_wait_ms`` for more until ``max_batch`` are
gathered; it runs ONE model call for the batch in a dedicated worker thread (the event loop never runs the model)
and hands each caller its row. While the model runs, new requests queue up and form the next batch, so under load
batches grow by themselves and the per-call overhead is shared. A full queue fails fast with :class:`QueueFull`
(the server answers 503 with ``Retry-After``) instead of letting latency pile up.

A model call that has not returned within ``stall_s`` (a hung kernel, a deadlock) is abandoned: a Python thread
cannot be killed, so its worker is marked dead (it exits by itself if the call ever returns), the batch's callers get
:class:`WorkerStalled`, and a fresh worker takes the next batch. At most ``max_stalled`` abandoned workers may be
stuck at once; at that cap :attr:`Batcher.healthy` is False (the server's readiness probe fails) and no further
thread is started: the batcher waits for a stuck call to return instead, so threads stay bounded.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any

import numpy as np


class QueueFull(Exception):
    """The batch queue is at capacity; the caller should retry after a short pause."""


class WorkerStalled(Exception):
    """The model call of this image's batch did not return within ``stall_s``; its worker was abandoned."""


class _Worker:
    """One model thread with its own job queue.

    A daemon thread, unlike a ``ThreadPoolExecutor``'s (joined at interpreter exit): a call stuck forever must not
    keep the process from exiting. :meth:`retire` lets the thread end after its current call, if that ever returns.
    """

    def __init__(self, name: str):
        self._jobs: SimpleQueue = SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self.thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future:
        """Run ``fn(*args)`` in this thread; await the returned future from the event loop."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put((future, fn, args))
        return asyncio.wrap_future(future)

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, fn, args = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args)
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting caller
                future.set_exception(exc)
            else:
                future.set_result(result)

    def retire(self) -> None:
        self._jobs.put(None)

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()


class Batcher:
    """Gather single images into batches for ``fn`` (``(N, H, W, C) -> (N, K)``).

    Args:
        fn: the model call, run in the batcher's own thread.
        max_batch: most images per model call.
        max_wait_ms: longest time the first image of a batch waits for company.
        max_queue: most images waiting; beyond it :meth:`submit` raises :class:`QueueFull`.
        on_batch: called with the size of each batch (metrics).
        prepare: turns a queued item that is not an array (e.g. the bytes of a small upload) into one, in the
            worker thread just before the model call; an exception it raises goes to that item's caller only.
        stall_s: a model call running longer than this is abandoned and its worker replaced; None = never.
        max_stalled: most abandoned workers still stuck at once (see the module docstring).
        on_recycle: called each time a stalled worker is replaced (metrics).

    Example:
        >>> batcher = Batcher(classifier.predict_proba, max_batch=64, max_wait_ms=5)
        >>> await batcher.start()
        >>> probs = await batcher.submit(image)      # (K,) row of this image
    """

    def __init__(
        self,
        fn: Callable[[np.ndarray], np.ndarray],
        max_batch: int = 64,
        max_wait_ms: float = 5.0,
        max_queue: int = 1024,
        on_batch: Callable[[int], None] | None = None,
        prepare: Callable[[Any], np.ndarray] | None = None,
        stall_s: float | None = None,
        max_stalled: int = 4,
        on_recycle: Callable[[], None] | None = None,
    ):
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError(
                f"max_batch and max_queue must be >= 1 and max_wait_ms >= 0, got {max_batch}, {max_queue}, {max_wait_ms}"
            )
        if (stall_s is not None and stall_s <= 0) or max_stalled < 1:
            raise ValueError(
                f"stall_s must be > 0 (or None) and max_stalled >= 1, got {stall_s}, {max_stalled}"
            )
        self.fn = fn
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.on_batch = on_batch
        self.prepare = prepare
        self.stall_s = stall_s
        self.max_stalled = max_stalled
        self.on_recycle = on_recycle
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._worker = _Worker("imagerec-model-0")
        self._abandoned: list[_Worker] = []
        self.batches = 0
        self.recycles = 0
        self._busy = False  # a batch is taken off the queue and not yet answered

    async def start(self) -> None:
        self._queue = asyncio.Queue(self.max_queue)
        self._task = asyncio.create_task(self._run(), name="imagerec-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._worker.retire()

    @property
    def depth(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    @property
    def idle(self) -> bool:
        """Nothing queued and no batch being answered (a batcher being retired may be stopped)."""
        return self.depth == 0 and not self._busy

    @property
    def stalled(self) -> int:
        """Abandoned workers whose model call has still not returned."""
        self._abandoned = [worker for worker in self._abandoned if worker.alive]
        return len(self._abandoned)

    @property
    def healthy(self) -> bool:
        """False while ``max_stalled`` abandoned workers are stuck (one more stall could not be recycled)."""
        return self.stalled < self.max_stalled

    def submit(self, image: Any) -> asyncio.Future:
        """Queue one ``(H, W, C)`` image; the returned future resolves to its ``(K,)`` probabilities.

        Raises:
            QueueFull: when ``max_queue`` images are already waiting.
        """
        if self._queue is None:
            raise RuntimeError("Batcher.start() was not awaited")
        future = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((image, future))
        except asyncio.QueueFull:
            raise QueueFull(f"{self.max_queue} images are already waiting for the model") from None
        return future

    async def submit_many(self, images: list[Any]) -> list[np.ndarray]:
        """Queue several images (one request's files) and wait for all their rows."""
        futures = [self.submit(image) for image in images]
        try:
            return list(await asyncio.gather(*futures))
        finally:
            for future in futures:
                future.cancel()  # a no-op on finished ones; frees the rest when the caller gave up

    async def _abandon(self, work: asyncio.Future, live: list[tuple[Any, asyncio.Future]]) -> None:
        """The model call ``work`` passed ``stall_s``: fail its callers, then replace its worker (under the cap)."""
        error = WorkerStalled(
            f"the model call did not return within {self.stall_s:g} s; its worker was replaced"
        )
        for _, future in live:
            if not future.done():
                future.set_exception(error)
        while not work.done():
            if self.stalled < self.max_stalled:
                self._worker.retire()  # ends by itself if the stuck call ever returns
                self._abandoned.append(self._worker)
                self.recycles += 1
                self._worker = _Worker(f"imagerec-model-{self.recycles}")
                if self.on_recycle is not None:
                    self.on_recycle()
                break
            # at the cap: no new thread; wait for this call or an abandoned one to return
            await asyncio.wait({work}, timeout=min(self.stall_s or 1.0, 1.0))
        if not work.done():
            work.cancel()  # drops its result, whenever it comes
        elif not work.cancelled():
            work.exception()  # retrieved (not logged): its callers already have WorkerStalled

    async def _run(self) -> None:
        queue = self._queue
        while True:
            self._busy = False
            items = [await queue.get()]
            self._busy = True
            deadline = time.perf_counter() + self.max_wait
            while len(items) < self.max_batch:
                if not queue.empty():
                    items.append(queue.get_nowait())
                    continue
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    items.append(await asyncio.wait_for(queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            live = [(image, future) for image, future in items if not future.done()]
            if not live:
                continue
            work = self._worker.submit(self._work, [image for image, _ in live])
            done, _ = await asyncio.wait({work}, timeout=self.stall_s)
            if not done:
                await self._abandon(work, live)
                continue
            try:
                rows, errors = work.result()
            except Exception as exc:  # noqa: BLE001 - handed to every waiting caller, the loop goes on
                for _, future in live:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.batches += 1
            if self.on_batch is not None and len(rows):
                self.on_batch(len(rows))
            done = iter(rows)
            for index, (_, future) in enumerate(live):
                result = errors[index] if index in errors else next(done)
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    def _work(self, items: list[Any]) -> tuple[np.ndarray, dict[int, BaseException]]:
        """In the worker thread: prepare the items that need it, then ONE model call for the rest."""
        arrays, errors = [], {}
        for index, item in enumerate(items):
            if isinstance(item, np.ndarray) or self.prepare is None:
                arrays.append(np.asarray(item, dtype=np.float32))
                continue
            try:
                arrays.append(np.asarray(self.prepare(item), dtype=np.float32))
            except Exception as exc:  # noqa: BLE001 - this item's caller gets it
                errors[index] = exc
        if not arrays:
            return np.zeros((0, 0), np.float32), errors
        batch = np.stack(arrays)
        size = self.bucket(len(batch))
        if size > len(batch):  # pad to a bucket size: few distinct shapes, all warmed up at start
            batch = np.concatenate([batch, np.zeros((size - len(batch), *batch.shape[1:]), batch.dtype)])
        return self.fn(batch)[: len(arrays)], errors

    def bucket(self, n: int) -> int:
        """The batch size a batch of ``n`` is padded to: the next power of two, at most ``max_batch``.

        Like TF Serving's ``allowed_batch_sizes``: the model sees only a handful of shapes, so per-shape kernel
        setup (oneDNN primitives) happens once, at warm-up, not on the first request of each size.
        """
        return min(1 << max(0, n - 1).bit_length(), self.max_batch) if n <= self.max_batch else n

    def buckets(self) -> list[int]:
        sizes, n = [], 1
        while n < self.max_batch:
            sizes.append(n)
            n *= 2
        return [*sizes, self.max_batch]

    async def warm_up(self, shape: tuple[int, ...]) -> None:
        """One model call per bucket size, in the worker thread, before the server reports ready."""
        for size in self.buckets():
            await self._worker.submit(self.fn, np.zeros((size, *shape), np.float32))
