"""TF_CONFIG parsing, chief election, batch/LR scaling and the CLI's one-line errors (no cluster started)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from imagerec.distributed import strategy
from imagerec.errors import ImagerecError

TWO = {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 1}}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("{bad", "not JSON"),
        ('{"task": {"type": "worker", "index": 0}}', "no 'cluster'"),
        ('{"cluster": {"worker": ["127.0.0.1:1"]}}', "no 'task'"),
        (
            '{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 3}}',
            "task worker:3 is not in the cluster",
        ),
        ('{"cluster": {"worker": ["localhost"]}, "task": {"type": "worker", "index": 0}}', "not host:port"),
        ('{"cluster": {"gpu": ["h:1"]}, "task": {"type": "gpu", "index": 0}}', "cluster job 'gpu'"),
    ],
)
def test_malformed_tf_config_says_what_is_wrong(monkeypatch, raw, message):
    monkeypatch.setenv("TF_CONFIG", raw)
    with pytest.raises(ImagerecError, match="TF_CONFIG is malformed") as info:
        strategy.read_tf_config()
    assert message in str(info.value)
    assert "unset the TF_CONFIG" in str(info.value)


def test_chief_election(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert strategy.read_tf_config() is None and strategy.is_chief()
    assert not strategy.is_chief(TWO)
    assert strategy.is_chief({**TWO, "task": {"type": "worker", "index": 0}})
    with_chief = {"cluster": {"chief": ["h:1"], "worker": ["h:2"]}, "task": {"type": "worker", "index": 0}}
    assert not strategy.is_chief(with_chief)
    assert strategy.is_chief({**with_chief, "task": {"type": "chief", "index": 0}})
    assert strategy.num_workers(with_chief) == 2


def test_global_batch_and_linear_lr_scaling():
    s = strategy.scale_for_replicas(batch_size=32, learning_rate=1e-3, replicas=4)
    assert s["global_batch_size"] == 128 and s["per_replica_batch_size"] == 32
    assert s["learning_rate"] == pytest.approx(4e-3) and s["base_learning_rate"] == 1e-3
    assert strategy.scale_for_replicas(32, 1e-3, 1)["learning_rate"] == 1e-3


def test_default_strategy_without_cluster(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    _, info = strategy.get_strategy("auto")
    assert info["name"] == "default" and info["replicas"] == 1 and info["workers"] == 1
    with pytest.raises(ImagerecError, match="needs a TF_CONFIG"):
        strategy.get_strategy("multiworker")
    with pytest.raises(ImagerecError, match="unknown strategy 'ring'"):
        strategy.get_strategy("ring")


def test_non_chief_writes_to_a_private_temp_dir_that_is_removed(monkeypatch, tmp_path):
    monkeypatch.setenv("TF_CONFIG", json.dumps(TWO))
    out = tmp_path / "run"
    with strategy.worker_run(out, False, lambda resume: pytest.fail("only the chief prepares the run")) as (
        path,
        prev,
    ):
        assert path != out and path.is_dir() and prev is None
        (path / "model.keras").write_text("x")
    assert not path.exists() and not out.exists()


def test_non_chief_resume_needs_the_shared_run(monkeypatch, tmp_path):
    monkeypatch.setenv("TF_CONFIG", json.dumps(TWO))
    with pytest.raises(ImagerecError, match="must be on a path every worker can read"):
        with strategy.worker_run(tmp_path / "missing", True, lambda resume: None):
            pass


def test_cli_malformed_tf_config_is_one_line_exit_2(colour_data, tmp_path):
    env = {
        "TF_CONFIG": '{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 3}}',
        "PATH": "/usr/bin:/bin",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "imagerec", "train", str(colour_data), "--out", str(tmp_path / "run"), "--epochs", "1"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("imagerec: error:")]
    assert len(errors) == 1 and "task worker:3 is not in the cluster" in errors[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


MIRRORED_ON_TWO_CPUS = """
import sys
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
assert len(tf.config.list_logical_devices("CPU")) == 2
from imagerec.cli import main

main(sys.argv[1:])
"""


def test_mirrored_strategy_on_two_logical_cpus(colour_data, tmp_path):
    """``--strategy mirrored`` with 2 replicas (logical CPUs must be set before TF starts: a subprocess).

    36 images leave uneven batches (the small val split is divided 2 + 1 over the two replicas), which Keras'
    shape probe before ``fit``/``evaluate`` must survive.
    """
    run = tmp_path / "run"
    args = [str(colour_data), "--out", str(run), "--strategy", "mirrored", "--epochs", "4", "--batch-size", "4",
            "--seed", "0", "--augment", "none", "--mixed-precision", "off"]  # fmt: skip
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("TF_CONFIG", None)
    proc = subprocess.run(
        [sys.executable, "-c", MIRRORED_ON_TWO_CPUS, "train", *args],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads((run / "config.json").read_text())
    info = config["strategy"]
    assert info["name"] == "mirrored" and info["replicas"] == 2 and info["workers"] == 1
    assert info["per_replica_batch_size"] == 4 and info["global_batch_size"] == 8
    assert info["learning_rate"] == pytest.approx(2 * info["base_learning_rate"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs_completed"] == 4
    from imagerec import Classifier

    clf = Classifier.load(run, runtime="keras")  # the mirrored model saves and loads like any other
    paths = sorted(colour_data.glob("*/*.png"))
    right = [r.label == path.parent.name for path, r in zip(paths, clf.predict(paths), strict=True)]
    # the two replicas learnt the colours together (chance is 1/3; 2 epochs reached 0.67-1.0 from run to run on a
    # 2-core EPYC, TensorFlow's CPU kernels not being deterministic, so 4; a replica whose gradients were lost or
    # doubled would still get here, but not one whose updates broke the model)
    assert sum(right) / len(right) >= 0.8, (sum(right), len(right), metrics)
    assert metrics["val"]["accuracy"] >= 2 / 3 and metrics["test"]["accuracy"] >= 2 / 3, metrics
