"""Dynamic batching: concurrent requests share one model call.

Requests put one preprocessed image each on a bounded ``asyncio.Queue``. One consumer task takes the first waiting
image, then everything else already queued, and waits at most ``max_wait_ms`` for more until ``max_batch`` are
gathered; it runs ONE model call for the batch in a dedicated worker thread (the event loop never runs the model)
and hands each caller its row. While the model runs, new requests queue up and form the next batch, so under load
batches grow by themselves and the per-call overhead is shared. A full queue fails fast with :class:`QueueFull`
(the server answers 503 with ``Retry-After``) instead of letting latency pile up.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable
from typing import Any

import numpy as np


class QueueFull(Exception):
    """The batch queue is at capacity; the caller should retry after a short pause."""


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
    ):
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError(
                f"max_batch and max_queue must be >= 1 and max_wait_ms >= 0, got {max_batch}, {max_queue}, {max_wait_ms}"
            )
        self.fn = fn
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.on_batch = on_batch
        self.prepare = prepare
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="imagerec-model")
        self.batches = 0

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
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def depth(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

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

    async def _run(self) -> None:
        queue = self._queue
        loop = asyncio.get_running_loop()
        while True:
            items = [await queue.get()]
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
            try:
                rows, errors = await loop.run_in_executor(
                    self._executor, self._work, [image for image, _ in live]
                )
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
        loop = asyncio.get_running_loop()
        for size in self.buckets():
            await loop.run_in_executor(self._executor, self.fn, np.zeros((size, *shape), np.float32))
