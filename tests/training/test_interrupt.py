"""A real ``imagerec train`` process killed mid-epoch (SIGKILL) or interrupted (Ctrl-C) resumes with ``--resume``."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imagefixtures import write_colour_dataset

EPOCHS = 4
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}


def start_training(
    data: Path, out: Path, *extra: str, epochs: int = EPOCHS, sigint: signal.Handlers = signal.SIG_DFL
) -> subprocess.Popen:
    """Start ``imagerec train`` as a foreground process on a terminal would be: SIGINT at its default.

    A child inherits an *ignored* SIGINT (a runner that started pytest with ``&`` from a script ignores it in the
    whole tree, and Python then keeps it ignored), so the disposition is set explicitly rather than inherited: in
    this process around ``Popen`` (exec keeps SIG_IGN and resets a Python handler to SIG_DFL), not with a
    ``preexec_fn``, which is unsafe in a process that has threads.
    """
    cmd = [sys.executable, "-m", "imagerec", "train", str(data), "--out", str(out), "--model", "tutorial-cnn",
           "--epochs", str(epochs), "--batch-size", "2", "--augment", "default", *extra]  # fmt: skip
    old = signal.signal(signal.SIGINT, signal.default_int_handler if sigint is signal.SIG_DFL else sigint)
    try:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    finally:
        signal.signal(signal.SIGINT, old)


def resume(data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """``imagerec train DATA --out RUN --resume [extra]``, run to its end."""
    cmd = [sys.executable, "-m", "imagerec", "train", str(data), "--out", str(out), "--resume", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV)


def finish(proc: subprocess.Popen, timeout: float = 60) -> str:
    """Wait for the process; kill it (it would keep training on the CI's CPUs) if it does not end in time."""
    try:
        return proc.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        proc.kill()
        err = proc.communicate()[1]
        pytest.fail(f"the run did not stop within {timeout} s of the signal: {err[-2000:]}")


def wait_for_epoch(proc: subprocess.Popen, out: Path, epoch: int, timeout: float = 300) -> None:
    """Wait until the backup holds at least ``epoch`` complete epochs (then the next one is under way)."""
    latest = out / "backup" / "latest"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if latest.exists() and latest.read_text().strip() >= f"ckpt-{epoch:04d}":
            return
        if proc.poll() is not None:
            pytest.fail(f"training ended early ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("no epoch completed in time")


@pytest.fixture
def big_colour_data(tmp_path: Path) -> Path:
    # 3 x 60 images at batch 2: an epoch is ~70 steps, long enough to land a signal inside it.
    return write_colour_dataset(tmp_path / "colours", per_class=60, seed=3)


def test_sigkill_mid_epoch_then_resume(big_colour_data, tmp_path):
    out = tmp_path / "run"
    proc = start_training(big_colour_data, out)
    wait_for_epoch(proc, out, 1)
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    done = json.loads(
        (out / "backup" / (out / "backup" / "latest").read_text().strip() / "meta.json").read_text()
    )
    assert 1 <= done["epoch"] < EPOCHS, "the kill must land before the run finished"
    assert not (out / "metrics.json").exists()
    assert not [p for p in out.rglob("*") if ".tmp" in p.name and p.is_file() and p.stat().st_size == 0]

    resumed = resume(big_colour_data, out)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs_completed"] == EPOCHS
    assert metrics["test"]["accuracy"] >= 0.6
    with open(out / "history.csv") as fh:
        epochs = [int(r["epoch"]) for r in csv.DictReader(fh)]
    assert epochs[-1] == EPOCHS - 1 and epochs[0] == 0
    assert f"epoch {done['epoch'] + 1}/{EPOCHS}" in resumed.stderr
    assert "epoch 1/" not in resumed.stderr  # completed epochs are not trained again


def completed_epochs(out: Path) -> int:
    return int((out / "backup" / "latest").read_text().strip().removeprefix("ckpt-"))


def history_epochs(out: Path) -> list[int]:
    with open(out / "history.csv") as fh:
        return [int(r["epoch"]) for r in csv.DictReader(fh)]


def test_ctrl_c_saves_a_resumable_state_and_exits_cleanly(big_colour_data, tmp_path):
    out = tmp_path / "run"
    # many epochs: on a quiet machine an epoch of this data takes ~0.5 s, so a 4-epoch run could end before the signal
    proc = start_training(big_colour_data, out, epochs=200)
    wait_for_epoch(proc, out, 1)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    err = finish(proc)
    assert proc.returncode == 130, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("imagerec: error: training interrupted during epoch")
    assert f"--out {out} --resume" in last and "Traceback" not in err
    assert (out / "backup" / "latest").exists() and (out / "model.keras").exists()
    done = completed_epochs(out)
    assert f"during epoch {done + 1}; epoch {done} is saved" in last
    assert history_epochs(out) == list(range(done)), "the interrupted epoch must not be logged as complete"
    assert not (out / "metrics.json").exists()


def test_sigterm_stops_cleanly_even_where_sigint_is_ignored_and_the_run_resumes(big_colour_data, tmp_path):
    """A job started with ``&`` from a script ignores SIGINT (kept so); SIGTERM (kill, docker stop) still stops it."""
    out = tmp_path / "run"
    proc = start_training(big_colour_data, out, epochs=200, sigint=signal.SIG_IGN)
    wait_for_epoch(proc, out, 1)
    proc.send_signal(signal.SIGINT)
    wait_for_epoch(proc, out, 2)  # the ignored SIGINT did not stop it
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    err = finish(proc)
    assert proc.returncode == 143, err[-2000:]
    last = err.strip().splitlines()[-1]
    done = completed_epochs(out)
    assert done >= 2 and "Traceback" not in err
    assert last.startswith(f"imagerec: error: training interrupted by SIGTERM during epoch {done + 1}; ")
    assert history_epochs(out) == list(range(done)) and not (out / "metrics.json").exists()

    resumed = resume(big_colour_data, out, "--epochs", str(done + 1))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"epoch {done + 1}/{done + 1}" in resumed.stderr and "epoch 1/" not in resumed.stderr
    assert json.loads((out / "metrics.json").read_text())["epochs_completed"] == done + 1
    assert history_epochs(out) == list(range(done + 1))


def test_a_signal_during_the_last_epochs_save_is_not_lost_and_resume_finishes_the_run(tmp_path):
    """No batch boundary follows the last epoch's saves; the stop must still be acted on, not dropped."""
    data = write_colour_dataset(tmp_path / "colours", per_class=8, seed=3)
    out = tmp_path / "run"
    code = (
        "import os, signal, sys\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"  # as on a terminal, even if run with &
        "from imagerec.training.callbacks import AtomicBackupAndRestore as B\n"
        "save = B._save_model\n"
        "def patched(self):\n"
        "    save(self)\n"
        "    if self._current_epoch == 2:\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "B._save_model = patched\n"
        "from imagerec.cli import main\n"
        "main(sys.argv[1:])\n"
    )
    args = [
        "train",
        str(data),
        "--out",
        str(out),
        "--model",
        "tutorial-cnn",
        "--epochs",
        "2",
        "--batch-size",
        "4",
    ]
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300, env=ENV
    )
    assert proc.returncode == 130, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "imagerec: error: training interrupted after its last epoch; all 2 epochs are saved"
    )
    assert not (out / "metrics.json").exists() and history_epochs(out) == [0, 1]

    resumed = resume(data, out)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "epoch 1/" not in resumed.stderr and "epoch 2/" not in resumed.stderr  # nothing trained again
    assert json.loads((out / "metrics.json").read_text())["epochs_completed"] == 2
