"""``imagerec serve``'s uvicorn options: host, port and log level reach uvicorn; ``--workers 2`` really runs two
server processes, each loading the model and answering on its own, and stops cleanly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from server.conftest import COLOURS, free_port, make_image, png_bytes, serve_cli

SRC = Path(__file__).resolve().parents[2] / "src"
RED = png_bytes(make_image(COLOURS["red"], np.random.default_rng(3)))


def test_serve_passes_host_port_and_log_level_to_uvicorn(trained_run, monkeypatch):
    port = free_port()

    def check(live) -> None:
        assert live.url == f"http://127.0.0.1:{port}" and live.options["log_level"] == "info"
        assert live.server.config.port == port and live.server.config.log_level == "info"
        with httpx.Client(base_url=live.url, timeout=30) as client:
            assert client.get("/readyz").status_code == 200
            assert client.post("/v1/predict", content=RED).json()["predictions"][0]["label"] == "red"

    args = [str(trained_run), "--host", "127.0.0.1", "--port", str(port), "--log-level", "info"]
    serve_cli(monkeypatch, [*args, "--decode-workers", "0"], check)


def test_serve_cli_refuses_to_stand_in_for_several_workers(trained_run, monkeypatch):
    from imagerec.server import workers as app

    for name in (app.ENV_RUN, app.ENV_RUNTIME, app.ENV_SETTINGS):
        monkeypatch.delenv(
            name, raising=False
        )  # the CLI hands settings to workers through these: restore them
    with pytest.raises(pytest.fail.Exception, match="workers"):
        serve_cli(monkeypatch, [str(trained_run), "--workers", "2"])


def _wait_for(condition, what: str, proc: subprocess.Popen | None, log: Path, timeout: float = 300):
    """Poll ``condition`` until true; fail when the deadline passes or ``proc`` (if given) has exited."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
            raise AssertionError(
                f"{what}: not after {timeout:.0f} s (exit {proc.poll()})\n{log.read_text()[-3000:]}"
            )
        time.sleep(0.1)
    return value


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a live process, None when it is gone (or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rpartition(")")[2].split()
    except FileNotFoundError:
        return None
    return None if fields[0] in ("Z", "X") else (fields[0], int(fields[1]))


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _proc_stat(int(entry))):
            children.setdefault(stat[1], []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


@pytest.mark.slow  # two server processes each import TensorFlow and warm the model up: 30-90 s on 2 shared cores
def test_serve_two_workers_each_answer_and_stop_cleanly(trained_run, tmp_path):
    port, log = free_port(), tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "imagerec", "serve", str(trained_run), "--workers", "2", "--port", str(port),
           "--log-level", "info"]  # fmt: skip
    path = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "TF_CPP_MIN_LOG_LEVEL": "3"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    workers: list[int] = []
    try:
        text = lambda: log.read_text(errors="replace")  # noqa: E731
        _wait_for(lambda: text().count("Application startup complete.") == 2, "two workers ready", proc, log)
        workers = [int(pid) for pid in re.findall(r"Started server process \[(\d+)\]", text())]
        assert f"Started parent process [{proc.pid}]" in text() and f":{port}" in text()
        assert len(set(workers)) == 2 and proc.pid not in workers, text()
        assert all(_proc_stat(pid)[1] == proc.pid for pid in workers)  # the supervisor's own children
        for serving in workers:
            # with the other worker stopped, only `serving` can accept a new connection: its answers are its own
            others = [pid for pid in workers if pid != serving]
            for pid in others:
                os.kill(pid, signal.SIGSTOP)
            try:
                stopped = lambda others=others: all(_proc_stat(pid)[0] == "T" for pid in others)  # noqa: E731
                _wait_for(stopped, "other worker stopped", proc, log)
                with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                    assert client.get("/readyz").status_code == 200
                    answer = client.post("/v1/predict", content=RED).json()["predictions"][0]
                    metrics = client.get("/metrics").text
            finally:
                for pid in others:
                    os.kill(pid, signal.SIGCONT)
            assert answer["label"] == "red", answer
            # each process counts its own requests: this one has answered exactly one prediction
            assert re.search(r'^imagerec_predictions_total\{label="red"\} 1\.0$', metrics, re.M), metrics
        family = _descendants(proc.pid)  # the workers and their decode processes
        assert set(workers) <= family
        proc.send_signal(signal.SIGINT)  # Ctrl-C: uvicorn stops the workers, then itself
        assert proc.wait(timeout=120) == 0, text()
        _wait_for(lambda: not any(_proc_stat(pid) for pid in family), "children gone", None, log, timeout=30)
        assert "Traceback" not in text(), text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
