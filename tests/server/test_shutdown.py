"""``imagerec serve`` stopped by SIGTERM (a supervisor, ``docker stop``): a clean exit with nothing left behind."""

from __future__ import annotations

import signal

import httpx
import pytest

from imagefixtures import start_serve


@pytest.mark.parametrize("decode_workers", [1, 2])
def test_sigterm_releases_the_decode_workers_semaphores(trained_run, colour_pngs, decode_workers):
    """uvicorn ends the process by re-raising SIGTERM, which skips exit handlers: the decode pool must be closed
    (and its named semaphores released) before that, or multiprocessing's resource_tracker warns of leaks."""
    proc, url, _ = start_serve(trained_run, "--decode-workers", str(decode_workers))
    try:
        files = {"file": ("red.png", colour_pngs["red"], "image/png")}
        answer = httpx.post(f"{url}/v1/predict", files=files, timeout=60)
        assert answer.status_code == 200 and answer.json()["predictions"][0]["label"] == "red"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode in (0, -signal.SIGTERM), stderr[-2000:]
    assert "leaked semaphore" not in stderr and "Traceback" not in stderr, stderr[-2000:]
