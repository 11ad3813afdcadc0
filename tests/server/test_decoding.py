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
    (tmp_path / "sitecustomize.py").write_text(textwrap.dedent(HOOK))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), str(ROOT / "src")]))
    monkeypatch.setenv("IMAGEREC_TEST_CRASH_DECODE", "1")
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
    (tmp_path / "sitecustomize.py").write_text(textwrap.dedent(PIDS_HOOK))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), str(ROOT / "src")]))
    monkeypatch.setenv("IMAGEREC_TEST_DECODE_PIDS", str(seen))
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
