"""RELIABILITY C20-C22 against a real server: overload, a stalled model, a crashing decoder."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import re
import signal
import socket
import subprocess
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from imagefixtures import start_serve
from imagerec.server.batching import Batcher, WorkerStalled
from server.conftest import LiveServer

from .http_helpers import HealthProbe, colour_png
from .shared import COLOURS

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained(trained_run):
    return trained_run


def _fresh_classifier(run):
    from imagerec.classifier import Classifier

    return Classifier.load(run)


def _stalling(clf, release: threading.Event, max_s: float = 20.0):
    """Fault injection: the model call blocks until ``release`` is set (a hung kernel, a deadlock)."""
    real = clf.predict_scores

    def stalled(batch):
        release.wait(max_s)
        return real(batch)

    clf.predict_scores = stalled
    return clf


def _post(url: str, image: bytes, timeout: float = 30.0):
    import httpx

    start = time.perf_counter()
    response = httpx.post(f"{url}/v1/predict", files={"file": ("a.png", image, "image/png")}, timeout=timeout)
    return response, time.perf_counter() - start


# C20 -----------------------------------------------------------------------------------------------------
def test_c20_full_queue_answers_503_at_once_with_retry_after(trained):
    from imagerec.server.app import create_app
    from imagerec.settings import ServeSettings

    release = threading.Event()
    clf = _stalling(_fresh_classifier(trained), release)
    image = colour_png()
    app = create_app(clf, ServeSettings(max_queue=2, max_batch=1, max_wait_ms=0, timeout_s=20))
    release.set()  # let the start-up warm-up through; the stall begins below
    with LiveServer(app) as server:
        assert _post(server.url, image)[0].status_code == 200  # warm
        release.clear()
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            futures = [pool.submit(_post, server.url, image) for _ in range(12)]
            time.sleep(3.0)  # the model is stalled: whatever has finished by now was turned away
            early = [f.result() for f in futures if f.done()]
            release.set()
            results = [f.result() for f in futures]
    assert early, "no request was turned away while the queue was full"
    for response, seconds in early:
        assert response.status_code == 503, response.text
        assert response.headers.get("retry-after") and response.json()["error"]["code"] == "overloaded"
        assert seconds < 3.0  # at once, not at the 20 s deadline
    statuses = [r.status_code for r, _ in results]
    assert set(statuses) <= {200, 503} and 200 in statuses, statuses  # the accepted ones are served


def test_c20_burst_above_the_per_key_rate_gets_429(trained):
    import httpx

    from imagerec.server.app import create_app
    from imagerec.settings import ServeSettings

    app = create_app(_fresh_classifier(trained), ServeSettings(api_key="k", rate_limit=5, decode_workers=0))
    with LiveServer(app) as server, httpx.Client(timeout=30, headers={"X-API-Key": "k"}) as client:
        responses = [client.get(f"{server.url}/v1/model") for _ in range(12)]
        health = [client.get(f"{server.url}{p}").status_code for p in ("/healthz", "/readyz") * 10]
        statuses = [r.status_code for r in responses]
        assert statuses[:5] == [200] * 5 and 429 in statuses and statuses.count(200) <= 8, statuses
        limited = next(r for r in responses if r.status_code == 429)
        assert limited.json()["error"]["code"] == "rate_limited"
        assert int(limited.headers["retry-after"]) >= 1
        assert set(health) == {200}  # health probes are never rate limited
        time.sleep(int(limited.headers["retry-after"]))
        assert client.get(f"{server.url}/v1/model").status_code == 200  # the bucket refilled


# C21 -----------------------------------------------------------------------------------------------------
def test_c21_stalled_model_returns_504_at_the_deadline_and_health_stays_fast(trained):
    from imagerec.server.app import create_app
    from imagerec.settings import ServeSettings

    release = threading.Event()
    clf = _stalling(_fresh_classifier(trained), release)
    image = colour_png()
    app = create_app(clf, ServeSettings(timeout_s=1.5, max_batch=4))
    release.set()  # let the start-up warm-up through; the stall begins below
    with LiveServer(app) as server:
        assert _post(server.url, image)[0].status_code == 200
        release.clear()
        import httpx

        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        with httpx.Client(timeout=30, limits=limits) as client, HealthProbe(server.url) as probe:

            def post(_):
                start = time.perf_counter()
                response = client.post(
                    f"{server.url}/v1/predict", files={"file": ("a.png", image, "image/png")}
                )
                return response, time.perf_counter() - start

            with concurrent.futures.ThreadPoolExecutor(50) as pool:
                results = list(pool.map(post, range(50)))  # more than the 40 threadpool tokens
        release.set()
        statuses = {r.status_code for r, _ in results}
        assert statuses <= {503, 504}, statuses
        latencies = sorted(seconds for _, seconds in results)
        assert 1.4 < latencies[len(latencies) // 2] < 5.0, latencies  # answered at the 1.5 s deadline...
        assert latencies[-1] < 12.0, (
            latencies
        )  # ...and never left hanging (a shared 2-core box adds queueing)
        assert probe.failures == 0 and probe.median_ms < 100, (probe.median_ms, probe.max_ms)
        time.sleep(0.5)
        response, _ = _post(server.url, image)
        assert response.status_code == 200, response.text  # the worker is free again
        assert response.json()["predictions"][0]["label"] == "red"


@pytest.fixture
def never_released():
    """An event no test sets: a call waiting on it is deadlocked for the whole test; teardown frees the thread."""
    event = threading.Event()
    yield event
    event.set()


def _recycles(url: str) -> float:
    import httpx

    text = httpx.get(f"{url}/metrics", timeout=5).text
    return float(re.search(r"^imagerec_model_worker_recycles_total (\S+)$", text, re.M).group(1))


def test_c21_a_model_call_stuck_forever_is_abandoned_and_a_fresh_worker_serves(trained, never_released):
    """The first model call after start-up deadlocks and never returns during the test: only a recycled worker can
    serve the next requests (the C21 test above frees its stall, so it cannot tell)."""
    import httpx

    from imagerec.server.app import create_app
    from imagerec.settings import ServeSettings

    clf = _fresh_classifier(trained)
    real, armed, stuck = clf.predict_scores, threading.Event(), []

    def deadlocking(batch):
        if armed.is_set() and not stuck:  # the first call once armed (the start-up warm-up is let through)
            stuck.append(threading.current_thread())
            never_released.wait()
        return real(batch)

    clf.predict_scores = deadlocking
    # deadline 1 s; the stuck call is abandoned at stall_s = 2 x the deadline
    app = create_app(clf, ServeSettings(timeout_s=1.0, max_batch=4, decode_workers=0))
    with LiveServer(app) as server, HealthProbe(server.url) as probe:
        armed.set()
        response, seconds = _post(server.url, colour_png())
        assert response.status_code in (503, 504), response.text
        assert 0.9 < seconds < 4.0, seconds  # at the deadline
        deadline = time.monotonic() + 10
        while _recycles(server.url) < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        for seed, label in enumerate(list(COLOURS) * 2):
            response, _ = _post(server.url, colour_png(COLOURS[label], seed=seed))
            assert response.status_code == 200, response.text
            assert response.json()["predictions"][0]["label"] == label
        assert stuck and stuck[0].is_alive()  # the first call is still stuck in its abandoned thread
        assert _recycles(server.url) == 1
        assert re.search(
            r"^imagerec_model_workers_stalled 1\.0$", httpx.get(f"{server.url}/metrics").text, re.M
        )
        assert httpx.get(f"{server.url}/readyz").status_code == 200  # 1 stuck worker is under the cap of 4
    assert probe.failures == 0 and probe.median_ms < 100, (probe.median_ms, probe.max_ms)


def test_c21_stuck_workers_are_capped_and_readiness_follows(never_released):
    """At ``max_stalled`` stuck workers the batcher is unhealthy and starts no further thread; it recovers when the
    stuck calls return."""

    def model(batch):
        if batch.max() > 0:
            never_released.wait()
        return np.zeros((len(batch), 2), np.float32)

    stuck_image, image = np.ones((2, 2, 1)), np.zeros((2, 2, 1))

    async def go():
        batcher = Batcher(model, max_batch=1, max_wait_ms=0, stall_s=0.2, max_stalled=1)
        await batcher.start()
        with pytest.raises(WorkerStalled):
            await batcher.submit_many([stuck_image])
        assert (batcher.recycles, batcher.stalled, batcher.healthy) == (1, 1, False)
        assert (await batcher.submit_many([image]))[0].shape == (2,)  # the fresh worker serves
        worker = batcher._worker
        with pytest.raises(WorkerStalled):
            await batcher.submit_many([stuck_image])
        assert batcher.recycles == 1 and batcher._worker is worker  # at the cap: no third thread
        never_released.set()  # both stuck calls return; the abandoned thread exits
        assert (await asyncio.wait_for(batcher.submit_many([image]), 5))[0].shape == (2,)
        for _ in range(100):
            if batcher.healthy:
                break
            await asyncio.sleep(0.02)
        assert (batcher.stalled, batcher.healthy, batcher.recycles) == (0, True, 1)
        await batcher.stop()

    asyncio.run(go())


# C22 (+ C18's bound address, on the real CLI) ---------------------------------------------------------------
CRASH_HOOK = """
import os
if os.environ.get("IMAGEREC_TEST_CRASH_DECODE"):
    import imagerec.data.images as _images
    _real = _images.load_image
    def _crashing(source, *args, **kwargs):
        if isinstance(source, (bytes, bytearray, memoryview)) and bytes(source[:6]) == b"CRASH!":
            os.abort()  # what a memory-safety bug in a C decoder looks like: SIGABRT / SIGSEGV
        return _real(source, *args, **kwargs)
    _images.load_image = _crashing
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _listening_addresses(port: int) -> set[str]:
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            host, hexport = local.split(":")
            if state == "0A" and int(hexport, 16) == port:
                out.add(host)
    return out


@pytest.fixture(scope="module")
def cli_server(trained, tmp_path_factory):
    """``imagerec serve RUN`` as a real subprocess, defaults only, with the decode crash hook installed."""
    hook = tmp_path_factory.mktemp("hook")
    (hook / "sitecustomize.py").write_text(textwrap.dedent(CRASH_HOOK))
    env = {
        **os.environ,
        "PYTHONPATH": f"{hook}:{ROOT / 'src'}",
        "IMAGEREC_TEST_CRASH_DECODE": "1",
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    proc, url, port = start_serve(trained, env=env)
    yield proc, url, port
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_c18_cli_default_binds_127_0_0_1_only(cli_server):
    _, _, port = cli_server
    assert _listening_addresses(port) == {"0100007F"}  # 127.0.0.1, and nothing on 0.0.0.0 or ::


def test_c22_a_crashing_decoder_fails_one_request_and_the_server_survives(cli_server):
    proc, url, _ = cli_server
    image = colour_png()
    assert _post(url, image)[0].status_code == 200
    import httpx

    try:
        crashed = httpx.post(f"{url}/v1/predict", content=b"CRASH!" + image, timeout=30).status_code
    except httpx.HTTPError:
        crashed = None
    time.sleep(1.0)
    assert proc.poll() is None, "the server process died with the decoder"
    assert crashed is not None and crashed >= 500
    response, _ = _post(url, image)
    assert response.status_code == 200


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process from /proc, None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1])


def _alive(pids) -> set[int]:
    """The processes of ``pids`` that exist and are not zombies."""
    return {pid for pid in pids if (stat := _stat(pid)) is not None and stat[0] != "Z"}


def _live_children(pid: int) -> set[int]:
    """Living (non-zombie) processes whose parent is ``pid``."""
    candidates = (int(p.name) for p in Path("/proc").glob("[0-9]*"))
    return {child for child in _alive(candidates) if (stat := _stat(child)) is not None and stat[1] == pid}


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_c22_a_killed_server_leaves_no_decoder_process_behind(cli_server):
    """Runs last in this module: it SIGKILLs the shared CLI server. Its spawned decode workers (and the
    multiprocessing resource tracker) must notice and exit, not live on as orphans."""
    proc, _, _ = cli_server
    children = _live_children(proc.pid)
    assert children, "the server has no decode worker process"
    proc.kill()
    proc.wait(10)
    deadline = time.monotonic() + 10
    while _alive(children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(children), f"orphaned processes after the server was killed: {_alive(children)}"
