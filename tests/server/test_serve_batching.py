"""Dynamic batching: concurrent requests share model calls; a full queue answers 503 at once."""

from __future__ import annotations

import asyncio
import re
import threading
import time

import numpy as np
import pytest

from imagerec.server.batching import Batcher, QueueFull


def _batch_histogram(text: str) -> dict[str, float]:
    return {
        m.group(1): float(m.group(2))
        for m in re.finditer(r'imagerec_batch_size_bucket\{le="([^"]+)"\} (\S+)', text)
    }


def test_concurrent_requests_share_a_model_call(server, colour_pngs):
    import httpx

    before = _batch_histogram(httpx.get(f"{server.url}/metrics").text)

    async def burst():
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
            coros = [c.post("/v1/predict", content=colour_pngs[name]) for name in list(colour_pngs) * 8]
            return await asyncio.gather(*coros)

    responses = asyncio.run(burst())
    assert all(r.status_code == 200 for r in responses)
    assert [r.json()["predictions"][0]["label"] for r in responses] == list(colour_pngs) * 8
    after = _batch_histogram(httpx.get(f"{server.url}/metrics").text)
    # requests that went through a batch of size > 1 = count(le=+Inf) - count(le=1)
    singles = after["1.0"] - before.get("1.0", 0)
    total = after["+Inf"] - before.get("+Inf", 0)
    assert total < 24, f"{total} model calls for 24 concurrent requests: no batching"
    assert total - singles >= 1, "no batch larger than one image"


def test_batcher_rows_go_back_to_their_callers():
    async def go():
        batcher = Batcher(lambda b: b.reshape(len(b), -1)[:, :2] * 2, max_batch=8, max_wait_ms=20)
        await batcher.start()
        images = [np.full((2, 2, 1), i, np.uint8) for i in range(20)]
        rows = await asyncio.gather(*(batcher.submit_many([img]) for img in images))
        await batcher.stop()
        return rows, batcher.batches

    rows, batches = asyncio.run(go())
    assert [float(r[0][0]) for r in rows] == [2.0 * i for i in range(20)]
    assert 3 <= batches < 20  # 20 images at most 8 per call


def test_full_queue_fails_fast_and_model_errors_reach_callers():
    release = threading.Event()

    def slow_model(batch):
        release.wait(10)
        if batch.max() > 100:
            raise RuntimeError("model failed")
        return np.zeros((len(batch), 2), np.float32)

    async def go():
        batcher = Batcher(slow_model, max_batch=1, max_wait_ms=0, max_queue=2)
        await batcher.start()
        first = asyncio.ensure_future(batcher.submit_many([np.zeros((1, 1, 1))]))
        await asyncio.sleep(0.05)  # the worker holds the first image inside the model
        queued = [asyncio.ensure_future(batcher.submit_many([np.zeros((1, 1, 1))])) for _ in range(2)]
        await asyncio.sleep(0)
        start = time.perf_counter()
        with pytest.raises(QueueFull):
            batcher.submit(np.zeros((1, 1, 1)))
        refused_in = time.perf_counter() - start
        release.set()
        await asyncio.gather(first, *queued)
        with pytest.raises(RuntimeError, match="model failed"):
            await batcher.submit_many([np.full((1, 1, 1), 255)])
        ok = await batcher.submit_many([np.zeros((1, 1, 1))])  # the loop survived the failure
        await batcher.stop()
        return refused_in, ok

    refused_in, ok = asyncio.run(go())
    assert refused_in < 0.01
    assert ok[0].shape == (2,)


def test_overload_is_503_with_retry_after(classifier, colour_pngs):
    import httpx

    from imagerec.server.app import create_app
    from imagerec.settings import ServeSettings
    from server.conftest import LiveServer

    app = create_app(classifier, ServeSettings(max_batch=1, max_wait_ms=0, max_queue=1))
    with LiveServer(app) as live:

        async def burst():
            async with httpx.AsyncClient(base_url=live.url, timeout=30) as c:
                return await asyncio.gather(
                    *(c.post("/v1/predict", content=colour_pngs["red"]) for _ in range(48))
                )

        responses = asyncio.run(burst())
        codes = {r.status_code for r in responses}
        assert codes <= {200, 503}, codes
        assert 200 in codes
        busy = [r for r in responses if r.status_code == 503]
        assert busy, "48 concurrent requests never filled a queue of 1"
        assert busy[0].headers["retry-after"] == "1"
        assert busy[0].json()["error"]["code"] == "overloaded"
        assert httpx.post(f"{live.url}/v1/predict", content=colour_pngs["red"]).status_code == 200


def test_deadline_gives_504_and_health_stays_up(classifier, colour_pngs):
    import httpx

    from imagerec.server.app import create_app
    from imagerec.settings import ServeSettings
    from server.conftest import LiveServer

    # the batcher waits up to 2 s for company, the deadline is 0.3 s: the lone request must time out
    app = create_app(classifier, ServeSettings(max_wait_ms=2000, timeout_s=0.3))
    with LiveServer(app) as live, httpx.Client(base_url=live.url, timeout=10) as c:
        start = time.perf_counter()
        response = c.post("/v1/predict", content=colour_pngs["red"])
        assert response.status_code == 504, response.text
        assert response.json()["error"]["code"] == "timeout"
        assert time.perf_counter() - start < 1.5
        assert c.get("/healthz").status_code == 200
