"""RELIABILITY C20-C22 against a real server: overload, a stalled model, a crashing decoder."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from server.conftest import LiveServer

from .http_helpers import HealthProbe, colour_png

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained(trained_run):
    return trained_run


def _fresh_classifier(run):
    from imagerec.classifier import Classifier

    return Classifier.load(run)


def _stalling(clf, release: threading.Event, max_s: float = 20.0):
    """Fault injection: the model call blocks until ``release`` is set (a hung kernel, a deadlock)."""
    real = clf.predict_proba

    def stalled(batch):
        release.wait(max_s)
        return real(batch)

    clf.predict_proba = stalled
    return clf


def _post(url: str, image: bytes, timeout: float = 30.0):
    import httpx

    start = time.perf_counter()
    response = httpx.post(f"{url}/v1/predict", files={"file": ("a.png", image, "image/png")}, timeout=timeout)
    return response, time.perf_counter() - start


# C20 -----------------------------------------------------------------------------------------------------
def test_c20_full_queue_answers_503_at_once_with_retry_after(trained):
    from imagerec.server.app import ServeSettings, create_app

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

    from imagerec.server.app import ServeSettings, create_app

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
    from imagerec.server.app import ServeSettings, create_app

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
    import httpx

    hook = tmp_path_factory.mktemp("hook")
    (hook / "sitecustomize.py").write_text(textwrap.dedent(CRASH_HOOK))
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": f"{hook}:{ROOT / 'src'}",
        "IMAGEREC_TEST_CRASH_DECODE": "1",
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    exe = str(Path(sys.executable).with_name("imagerec"))
    proc = subprocess.Popen(
        [exe, "serve", str(trained), "--port", str(port)], env=env, stderr=subprocess.PIPE, text=True
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"imagerec serve did not start: {proc.stderr.read()[-2000:]}")
        time.sleep(0.5)
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
