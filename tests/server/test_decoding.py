"""The decode process pool (``imagerec serve --decode-workers N``): batched round trips, same arrays, crash isolation."""

from __future__ import annotations

import asyncio
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest
from tests.security.http_helpers import colour_png

from imagerec.data.images import load_image
from imagerec.errors import ImageRejected
from imagerec.server.decoding import DecodePool, DecoderCrashed

ROOT = Path(__file__).resolve().parents[2]
HOOK = """
import os
if os.environ.get("IMAGEREC_TEST_CRASH_DECODE"):
    import imagerec.data.images as _images
    _real = _images.load_image
    def _crashing(source, *args, **kwargs):
        if isinstance(source, (bytes, bytearray, memoryview)) and bytes(source[:6]) == b"CRASH!":
            os.abort()  # a memory-safety bug in a C decoder
        return _real(source, *args, **kwargs)
    _images.load_image = _crashing
"""


def _run(coro):
    return asyncio.run(coro)


def _hook_workers(tmp_path, monkeypatch, hook: str, **env: str) -> None:
    """Have the decode processes spawned next run ``hook`` at start-up (a ``sitecustomize``), with ``env`` set."""
    (tmp_path / "sitecustomize.py").write_text(textwrap.dedent(hook))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), str(ROOT / "src")]))
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def test_concurrent_uploads_share_round_trips_and_match_in_process_decoding():
    images = [colour_png(seed=seed) for seed in range(40)]
    pool = DecodePool(1, (20, 20), 3, "stretch")
    try:
        pool.warm_up()

        async def go():
            return await asyncio.gather(*(pool.decode(data) for data in images))

        arrays = _run(go())
    finally:
        pool.shutdown()
    for data, array in zip(images, arrays, strict=True):
        np.testing.assert_array_equal(array, load_image(data, (20, 20), 3, "stretch"))
    # 40 concurrent uploads, one worker: the first goes alone, the rest wait for it and share round trips
    assert 2 <= pool.batches <= 5, pool.batches


def test_a_rejected_upload_fails_alone_in_its_batch():
    pool = DecodePool(1, (16, 16), 1, "stretch")
    try:

        async def go():
            return await asyncio.gather(
                *(pool.decode(data) for data in (colour_png(), b"not an image", colour_png(seed=1))),
                return_exceptions=True,
            )

        results = _run(go())
    finally:
        pool.shutdown()
    assert isinstance(results[1], ImageRejected)
    assert results[0].shape == results[2].shape == (16, 16, 1)


def test_a_crashing_decoder_fails_its_batch_and_the_pool_recovers(tmp_path, monkeypatch):
    _hook_workers(tmp_path, monkeypatch, HOOK, IMAGEREC_TEST_CRASH_DECODE="1")
    pool = DecodePool(1, (16, 16), 3, "stretch")
    try:
        pool.warm_up()

        async def crash():
            return await asyncio.gather(pool.decode(b"CRASH!" + colour_png()), return_exceptions=True)

        (crashed,) = _run(crash())
        assert isinstance(crashed, DecoderCrashed)
        assert pool.crashes == 1

        async def after():
            return await asyncio.gather(*(pool.decode(colour_png(seed=s)) for s in range(5)))

        assert [a.shape for a in _run(after())] == [(16, 16, 3)] * 5
    finally:
        pool.shutdown()


def test_shutdown_cancels_waiting_uploads():
    pool = DecodePool(1, (16, 16), 3, "stretch")

    async def go():
        tasks = [asyncio.ensure_future(pool.decode(colour_png(seed=s))) for s in range(10)]
        await asyncio.sleep(0)  # all queued; one batch in flight, the rest waiting
        pool.shutdown()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = _run(go())
    assert all(isinstance(r, (np.ndarray, asyncio.CancelledError, DecoderCrashed)) for r in results), results
    assert any(not isinstance(r, np.ndarray) for r in results)


PIDS_HOOK = """
import os
if os.environ.get("IMAGEREC_TEST_DECODE_PIDS"):
    import time
    from pathlib import Path
    import imagerec.data.images as _images
    _real = _images.load_image
    _seen = Path(os.environ["IMAGEREC_TEST_DECODE_PIDS"])
    _first = [True]
    def _recording(source, *args, **kwargs):
        (_seen / str(os.getpid())).touch()
        # hold this process's first decode until another process decodes too: a pool that hands every batch
        # to one process never gets past this (the deadline lets the test fail on the PIDs instead of hanging)
        deadline = time.monotonic() + 30
        while _first[0] and len(list(_seen.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        _first[0] = False
        return _real(source, *args, **kwargs)
    _images.load_image = _recording
"""


def _parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        return int(fh.read().rpartition(")")[2].split()[1])


@pytest.mark.parametrize("workers", [2])
def test_several_workers_each_take_a_batch(workers, tmp_path, monkeypatch):
    """Each worker process decodes a batch of its own: the decoders record their PIDs, and the first one waits
    until a second process decodes (it can only be another worker, since the first is busy)."""
    seen = tmp_path / "pids"
    seen.mkdir()
    _hook_workers(tmp_path, monkeypatch, PIDS_HOOK, IMAGEREC_TEST_DECODE_PIDS=str(seen))
    images = [colour_png(seed=s) for s in range(30)]
    pool = DecodePool(workers, (16, 16), 3, "stretch")
    try:
        pool.warm_up()

        async def go():
            return await asyncio.gather(*(pool.decode(data) for data in images))

        arrays = _run(go())
        pids = {int(p.name) for p in seen.iterdir()}
        assert len(pids) == workers and os.getpid() not in pids, pids
        assert {_parent_of(pid) for pid in pids} == {os.getpid()}  # the pool's own children
    finally:
        pool.shutdown()
    for data, array in zip(images, arrays, strict=True):
        np.testing.assert_array_equal(array, load_image(data, (16, 16), 3, "stretch"))
    assert 2 <= pool.batches <= 8, pool.batches


GARBAGE_HOOK = """
import os
if os.environ.get("IMAGEREC_TEST_GARBAGE_DECODE"):
    import imagerec.server.decode_framing as _framing
    _real = _framing.pack_results
    def _garbage(results):
        # a worker taken over by a hostile upload: it answers bytes that are not the framing
        if any(getattr(r, "message", "") == "GARBAGE" for r in results):
            return b"A" + b"\\xff" * 40
        return _real(results)
    _framing.pack_results = _garbage
    import imagerec.data.images as _images
    _load = _images.load_image
    def _load_or_flag(source, *args, **kwargs):
        if isinstance(source, bytes) and source.startswith(b"GARBAGE"):
            from imagerec.errors import ImageRejected
            raise ImageRejected("corrupt", "GARBAGE")
        return _load(source, *args, **kwargs)
    _images.load_image = _load_or_flag
"""


def test_a_worker_answering_garbage_fails_its_batch_and_is_replaced(tmp_path, monkeypatch):
    """Nothing from a worker is trusted: a malformed answer fails that batch (503 decoder_crashed), the worker is
    killed and replaced, and the next uploads decode."""
    _hook_workers(tmp_path, monkeypatch, GARBAGE_HOOK, IMAGEREC_TEST_GARBAGE_DECODE="1")
    pool = DecodePool(1, (16, 16), 3, "stretch")
    try:
        pool.warm_up()
        first = pool._workers[0].process

        async def garbage():
            return await asyncio.gather(pool.decode(b"GARBAGE" + colour_png()), return_exceptions=True)

        (answer,) = _run(garbage())
        assert isinstance(answer, DecoderCrashed) and "garbage" in str(answer)
        assert pool.crashes == 1 and pool._workers[0].process is not first
        first.join(10)
        assert not first.is_alive()

        async def after():
            return await asyncio.gather(*(pool.decode(colour_png(seed=s)) for s in range(3)))

        assert [a.shape for a in _run(after())] == [(16, 16, 3)] * 3
    finally:
        pool.shutdown(5.0)


def test_a_worker_that_died_while_idle_costs_no_upload():
    """A decode process killed between batches: the next batch waits for its replacement instead of failing."""
    import signal

    pool = DecodePool(1, (16, 16), 3, "stretch")
    try:
        pool.warm_up()

        async def decode(seed):
            return await pool.decode(colour_png(seed=seed))

        assert _run(decode(0)).shape == (16, 16, 3)
        victim = pool._workers[0].process
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(10)
        assert _run(decode(1)).shape == (16, 16, 3)  # requeued to the fresh worker, not failed
        assert pool.crashes == 1
    finally:
        pool.shutdown(5.0)


def test_a_large_batch_does_not_block_the_event_loop_while_a_worker_starts():
    """Uploads bigger than a pipe's buffer are written as the worker drains them (add_writer), so the event loop
    keeps running while a just-started worker is still importing its decoder."""
    import io

    from PIL import Image

    def noise_png(seed):
        buf = io.BytesIO()
        pixels = np.random.default_rng(seed).integers(0, 256, (256, 256, 3), np.uint8)
        Image.fromarray(pixels).save(buf, format="PNG")
        return buf.getvalue()

    big = [noise_png(s) for s in range(8)]  # ~200 KB each: far more than the 64 KiB a pipe holds
    assert sum(map(len, big)) > 2**20
    pool = DecodePool(1, (16, 16), 3, "stretch")  # not warmed up: the worker is still starting
    try:

        async def go():
            tasks = [asyncio.ensure_future(pool.decode(data)) for data in big]
            await asyncio.sleep(
                0
            )  # the tasks ran: the batch was handed to the worker, which is still starting
            waiting = len(
                pool._workers[0].outbox
            )  # a blocking write would have returned only when all was read
            return await asyncio.gather(*tasks), waiting

        arrays, waiting = _run(go())
        assert [a.shape for a in arrays] == [(16, 16, 3)] * 8
        assert waiting > 0, "the first upload was written in one blocking call"
    finally:
        pool.shutdown(5.0)
