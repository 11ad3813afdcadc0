"""``imagerec serve`` stopped by SIGTERM (a supervisor, ``docker stop``): a clean exit with nothing left behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("decode_workers", [1, 2])
def test_sigterm_releases_the_decode_workers_semaphores(trained_run, colour_pngs, decode_workers):
    """uvicorn ends the process by re-raising SIGTERM, which skips exit handlers: the decode pool must be closed
    (and its named semaphores released) before that, or multiprocessing's resource_tracker warns of leaks."""
    port = _free_port()
    exe = str(Path(sys.executable).with_name("imagerec"))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    args = [exe, "serve", str(trained_run), "--port", str(port), "--decode-workers", str(decode_workers)]
    proc = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "imagerec serve did not start"
            time.sleep(0.3)
        files = {"file": ("red.png", colour_pngs["red"], "image/png")}
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/predict", files=files, timeout=60)
        assert answer.status_code == 200 and answer.json()["predictions"][0]["label"] == "red"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode in (0, -signal.SIGTERM), stderr[-2000:]
    assert "leaked semaphore" not in stderr and "Traceback" not in stderr, stderr[-2000:]
