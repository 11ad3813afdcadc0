"""``imagerec serve RUN --record DIR``: one record per answered image (v1 uploads, multi-file uploads, KServe v2
BYTES and pixels), ``--record-images none``, a record directory that cannot be written, and a SIGKILL mid-load."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from imagerec.monitoring.records import read_records
from server.conftest import COLOURS, free_port, make_image, png_bytes, serve_cli

SRC = Path(__file__).resolve().parents[2] / "src"
RNG = np.random.default_rng(11)
PNGS = {name: png_bytes(make_image(colour, RNG)) for name, colour in COLOURS.items()}
NOISE = png_bytes(RNG.integers(0, 255, (32, 32, 3), dtype=np.uint8))


def metric(text: str, name: str) -> float:
    return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))


def test_every_answered_image_is_one_record(trained_run, tmp_path, monkeypatch):
    record = tmp_path / "recorded"
    seen: dict = {}

    def check(live) -> None:
        with httpx.Client(base_url=live.url, timeout=30) as client:
            assert client.post("/v1/predict", content=PNGS["red"]).status_code == 200
            files = [("file", (f"{c}.png", PNGS[c], "image/png")) for c in ("green", "blue")]
            files.append(("file", ("noise.png", NOISE, "image/png")))
            assert client.post("/v1/predict", files=files).status_code == 200
            data = [base64.b64encode(PNGS[c]).decode() for c in ("red", "blue")]
            body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": data}]}
            assert client.post("/v2/models/imagerec-cnn/infer", json=body).status_code == 200
            pixels = make_image(COLOURS["green"], RNG).astype(np.float32)
            body = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, *pixels.shape],
                                "data": pixels.ravel().tolist()}]}  # fmt: skip
            assert client.post("/v2/models/imagerec-cnn/infer", json=body).status_code == 200
            seen["metrics"] = client.get("/metrics").text
            seen["model"] = client.get("/v1/model").json()

    serve_cli(monkeypatch, [str(trained_run), "--record", str(record), "--decode-workers", "0"], check)
    assert metric(seen["metrics"], "imagerec_recording") == 1.0
    assert seen["model"]["record"]["state"] == "recording" and seen["model"]["record"]["dir"] == str(record)

    records = read_records(record)  # the server's shutdown wrote what was queued
    assert len(records.rows) == 7 and records.torn == 0
    uploads = [PNGS["red"], PNGS["green"], PNGS["blue"], NOISE, PNGS["red"], PNGS["blue"]]
    assert [r["sha256"] for r in records.rows[:6]] == [hashlib.sha256(d).hexdigest() for d in uploads]
    assert all((r["width"], r["height"]) == (32, 32) for r in records.rows)
    assert records.embeddings().shape[0] == 7  # every record, v2 pixels included, carries its embedding
    assert {r["source"] for r in records.rows} == {"serve"} and records.rows[0]["model_version"]
    for row in records.rows:
        if row["image"]:  # a doubtful answer: its upload kept byte for byte
            assert row["why"] is not None and records.image_path(row).exists()


def test_record_images_none_keeps_no_pixels(trained_run, tmp_path, monkeypatch):
    record = tmp_path / "recorded"

    def check(live) -> None:
        with httpx.Client(base_url=live.url, timeout=30) as client:
            for _ in range(3):
                assert client.post("/v1/predict", content=NOISE).status_code == 200

    args = [str(trained_run), "--record", str(record), "--record-images", "none", "--threshold", "1"]
    serve_cli(monkeypatch, [*args, "--decode-workers", "0"], check)
    rows = read_records(record).rows
    assert len(rows) == 3 and all(r["image"] is None and r["label"] == "unknown" for r in rows)
    assert not [p for p in (record / "images").rglob("*") if p.is_file()]


def test_a_bad_record_images_value_is_refused_before_the_model_loads(trained_run, monkeypatch, capsys):
    serve_cli(monkeypatch, [str(trained_run), "--record", "x", "--record-images", "all"], code=2)
    assert "--record-images must be one of review, none" in capsys.readouterr().err


def test_an_unwritable_record_dir_stops_recording_not_serving(trained_run, tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    seen: dict = {}

    def check(live) -> None:
        with httpx.Client(base_url=live.url, timeout=30) as client:
            seen["status"] = [client.post("/v1/predict", content=PNGS["red"]).status_code for _ in range(3)]
            seen["metrics"] = client.get("/metrics").text
            seen["model"] = client.get("/v1/model").json()

    with caplog.at_level(logging.ERROR, logger="imagerec.monitoring"):
        serve_cli(
            monkeypatch, [str(trained_run), "--record", str(blocker / "rec"), "--decode-workers", "0"], check
        )
    assert seen["status"] == [200, 200, 200]
    assert metric(seen["metrics"], "imagerec_recording") == 0.0
    assert metric(seen["metrics"], "imagerec_records_dropped_total") == 3.0
    assert seen["model"]["record"]["state"] == "failed"
    lines = [r for r in caplog.records if r.name == "imagerec.monitoring"]
    assert len(lines) == 1 and "serving goes on" in lines[0].getMessage()


def _serve(run: Path, port: int, record: Path, log: Path, preexec=None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "imagerec", "serve", str(run), "--port", str(port), "--record", str(record),
           "--decode-workers", "0"]  # fmt: skip
    path = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "TF_CPP_MIN_LOG_LEVEL": "3"}
    with open(log, "wb") as out:
        return subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True, preexec_fn=preexec
        )


def _ready(proc: subprocess.Popen, url: str, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"server not ready (exit {proc.poll()})\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


def test_a_sigkill_mid_load_loses_at_most_the_last_second_and_corrupts_nothing(trained_run, tmp_path):
    port, record, log = free_port(), tmp_path / "recorded", tmp_path / "serve.log"
    proc = _serve(trained_run, port, record, log)
    url = f"http://127.0.0.1:{port}"
    answered: list[float] = []  # when each 200 came back
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=url, timeout=10) as http:
            while not stop.is_set():
                try:
                    if http.post("/v1/predict", content=PNGS["blue"]).status_code == 200:
                        answered.append(time.monotonic())
                except httpx.TransportError:
                    return

    try:
        _ready(proc, url, log)
        threads = [threading.Thread(target=client, daemon=True) for _ in range(4)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 120
        # mid-load, well past the first flushes: 300 answers and at least 3 s of load (a fast host answers 300
        # within the last second, which would leave nothing the bar promises to keep)
        while time.monotonic() < deadline and (len(answered) < 300 or time.monotonic() - answered[0] < 3.0):
            time.sleep(0.05)
        killed_at = time.monotonic()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        stop.set()
        for thread in threads:
            thread.join(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    records = read_records(record)
    assert records.torn == 0  # whole lines only: not even the last one is cut
    settled = sum(t < killed_at - 1.0 for t in answered)
    assert settled > 0 and len(records.rows) >= settled, (len(records.rows), settled, len(answered))
    assert len(records.rows) <= len(answered)
    assert {r["sha256"] for r in records.rows} == {hashlib.sha256(PNGS["blue"]).hexdigest()}


def test_a_write_that_fails_mid_serving_stops_recording_once_and_serving_goes_on(trained_run, tmp_path):
    """A real failure: once the server is up, RLIMIT_FSIZE lets none of its files grow past 20 kB (as a full
    disk would)."""
    import resource

    def no_sigxfsz() -> None:
        signal.signal(
            signal.SIGXFSZ, signal.SIG_IGN
        )  # inherited: the write fails with EFBIG, nobody is killed

    port, record, log = free_port(), tmp_path / "recorded", tmp_path / "serve.log"
    proc = _serve(trained_run, port, record, log, preexec=no_sigxfsz)
    url = f"http://127.0.0.1:{port}"
    try:
        _ready(proc, url, log)
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (20_000, 20_000))
        with httpx.Client(base_url=url, timeout=30) as client:
            deadline = time.monotonic() + 120
            while metric(client.get("/metrics").text, "imagerec_recording") == 1.0:
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                for _ in range(20):
                    assert client.post("/v1/predict", content=PNGS["red"]).status_code == 200
            assert [client.post("/v1/predict", content=PNGS["red"]).status_code for _ in range(5)] == [
                200
            ] * 5
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    text = log.read_text(errors="replace")
    assert text.count("recording to") == 1 and "serving goes on" in text, text[-3000:]
    assert read_records(record).torn == 0
