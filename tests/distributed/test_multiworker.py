"""Two REAL worker processes on 127.0.0.1 (TF_CONFIG, free ports) train one model with MultiWorkerMirroredStrategy."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from imagefixtures import write_colour_dataset

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
EPOCHS = 6


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _start(
    index: int, ports: list[int], data: Path, out: Path, log: Path, epochs: int = EPOCHS, heartbeat: int = 30
) -> subprocess.Popen:
    tmp = (
        log.parent / f"tmp{index}"
    )  # the worker's TMPDIR: its private run dir must be gone from here afterwards
    tmp.mkdir(exist_ok=True)
    tf_config = {
        "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
        "task": {"type": "worker", "index": index},
    }
    env = {**os.environ, "TF_CONFIG": json.dumps(tf_config), "TF_CPP_MIN_LOG_LEVEL": "2",
           "IMAGEREC_HEARTBEAT_TIMEOUT_S": str(heartbeat), "IMAGEREC_CLUSTER_TIMEOUT_S": "300", "TMPDIR": str(tmp)}  # fmt: skip
    cmd = [sys.executable, "-m", "imagerec", "train", str(data), "--out", str(out), "--epochs", str(epochs),
           "--batch-size", "8", "--seed", "0", "--augment", "none"]  # fmt: skip
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)


def _accuracy(run: Path, holdout: Path) -> float:
    from imagerec.classifier import Classifier

    paths = sorted(holdout.rglob("*.png"))
    preds = Classifier.load(run).predict([str(p) for p in paths], threshold=0)
    return float(np.mean([p.label == path.parent.name for p, path in zip(preds, paths, strict=True)]))


@pytest.fixture
def cluster_data(tmp_path: Path) -> tuple[Path, Path]:
    return write_colour_dataset(tmp_path / "data", per_class=16, seed=3), write_colour_dataset(
        tmp_path / "holdout", per_class=10, seed=7
    )


def test_two_workers_train_one_model_and_only_the_chief_writes(tmp_path, cluster_data):
    data, holdout = cluster_data
    ports = _free_ports(2)
    outs = [tmp_path / "out0", tmp_path / "out1"]
    logs = [tmp_path / "w0.log", tmp_path / "w1.log"]
    procs = [_start(i, ports, data, outs[i], logs[i]) for i in range(2)]
    try:
        codes = [p.wait(timeout=800) for p in procs]
    finally:
        for p in procs:
            p.kill()
    text = [log.read_text() for log in logs]
    assert codes == [0, 0], text
    for i in range(2):  # both took part, every epoch, with the same number of steps
        steps = [int(s) for s in re.findall(rf"worker worker:{i} epoch \d+: (\d+) steps", text[i])]
        assert len(steps) == EPOCHS and all(s >= 1 for s in steps), text[i]
        assert f"task worker:{i} joined a cluster of 2 workers" in text[i]
    losses = [re.findall(r"worker worker:\d epoch \d+: \d+ steps, loss ([\d.]+)", t) for t in text]
    assert losses[0] == losses[1]  # one model: the all-reduced loss is the same on both workers

    config = json.loads((outs[0] / "config.json").read_text())
    assert config["strategy"]["name"] == "multiworker" and config["strategy"]["workers"] == 2
    assert config["strategy"]["global_batch_size"] == 16 and config["strategy"]["per_replica_batch_size"] == 8
    assert config["strategy"]["learning_rate"] == pytest.approx(2 * config["strategy"]["base_learning_rate"])
    for name in ("model.keras", "metrics.json", "history.csv", "manifest.csv"):
        assert (outs[0] / name).exists(), name
    assert not outs[1].exists(), list(outs[1].rglob("*"))  # worker 1 wrote no run
    assert not list((tmp_path / "tmp1").glob("imagerec-*"))  # and its private temp dir is gone

    import imagerec

    # the equivalent single-process run: the same global batch and the same (scaled) learning rate
    lr = config["strategy"]["learning_rate"]
    single = imagerec.train(
        data,
        out=tmp_path / "single",
        epochs=EPOCHS,
        batch_size=16,
        learning_rate=lr,
        seed=0,
        augment="none",
        log=lambda *_: None,
    )
    multi_acc, single_acc = _accuracy(outs[0], holdout), _accuracy(single.path, holdout)
    assert multi_acc >= 0.75 and single_acc >= 0.75, (multi_acc, single_acc)
    assert abs(multi_acc - single_acc) <= 0.2, (multi_acc, single_acc)


def test_a_dead_worker_stops_the_chief_with_one_line_and_a_restart_rejoins(tmp_path, cluster_data):
    data, _ = cluster_data
    ports = _free_ports(2)
    outs = [tmp_path / "out0", tmp_path / "out1"]
    logs = [tmp_path / "w0.log", tmp_path / "w1.log"]
    epochs = 5
    procs = [_start(i, ports, data, outs[i], logs[i], epochs, heartbeat=10) for i in range(2)]
    try:
        deadline = time.monotonic() + 600
        while "worker worker:1 epoch 2:" not in logs[1].read_text() and time.monotonic() < deadline:
            assert procs[1].poll() is None, logs[1].read_text()
            time.sleep(0.5)
        procs[1].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        code = procs[0].wait(timeout=180)
        waited = time.monotonic() - killed
    finally:
        for p in procs:
            p.kill()
    chief = logs[0].read_text()
    assert code == 2, chief[-3000:]
    errors = [ln for ln in chief.splitlines() if ln.startswith("imagerec: error:")]
    assert (
        len(errors) == 1
        and "multi-worker training stopped" in errors[0]
        and "restart every worker" in errors[0]
    )
    assert "Traceback" not in chief
    assert waited < 180
    done = int((outs[0] / "backup" / "latest").read_text().split("-")[1])
    assert done >= 2

    ports = _free_ports(2)  # the same command again: both workers rejoin from the chief's checkpoint
    logs2 = [tmp_path / "w0b.log", tmp_path / "w1b.log"]
    procs = [_start(i, ports, data, outs[0], logs2[i], epochs) for i in range(2)]  # shared path this time
    try:
        codes = [p.wait(timeout=800) for p in procs]
    finally:
        for p in procs:
            p.kill()
    text = [log.read_text() for log in logs2]
    assert codes == [0, 0], text
    assert all("rejoining" in t for t in text)
    for i in range(2):
        resumed = [int(e) for e in re.findall(rf"worker worker:{i} epoch (\d+):", text[i])]
        assert resumed == list(range(done + 1, epochs + 1)), text[i]
    assert json.loads((outs[0] / "metrics.json").read_text())["epochs_completed"] == epochs
