"""``StopOnSignal``: the handlers it installs, what it restores, an inherited ignored SIGINT, a second signal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from imagerec.training.callbacks import StopOnSignal

# Run in a child process: the test suite's process has loaded OpenVINO by now (export tests), and a SIGINT sent to
# that process was seen to crash it (SIGSEGV inside kill(); not reproduced in a standalone script: see issue 22's
# note). What is tested here is StopOnSignal, not that interaction.
RECORDED_THEN_RAISED = """
import os, signal
from imagerec.training.callbacks import StopOnSignal

inherited = signal.signal(signal.SIGINT, signal.default_int_handler)  # as on a terminal, even under &
before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
stopper = StopOnSignal()
with stopper.installed():
    assert signal.getsignal(signal.SIGINT) == stopper._handler
    assert signal.getsignal(signal.SIGTERM) == stopper._handler  # so the kill below cannot end the process
    stopper.on_train_batch_end(0)  # nothing requested yet: no-op
    os.kill(os.getpid(), signal.SIGINT)  # recorded, not raised here
    assert stopper.signum == signal.SIGINT
    raised = False
    try:
        stopper.on_train_batch_end(1)
    except KeyboardInterrupt:
        raised = True
    assert raised
assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
print("ok")
"""


def test_a_signal_is_only_recorded_then_raised_at_the_next_boundary_and_handlers_are_restored():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, "-c", RECORDED_THEN_RAISED], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]


def test_an_inherited_ignored_sigint_stays_ignored():
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    term = signal.getsignal(signal.SIGTERM)
    try:
        stopper = StopOnSignal()
        with stopper.installed():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) == stopper._handler
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN and signal.getsignal(signal.SIGTERM) == term
    finally:
        signal.signal(signal.SIGINT, old)


def test_a_second_signal_ends_the_process_at_once_by_that_signal():
    code = (
        "import os, signal, time\n"
        "from imagerec.training.callbacks import StopOnSignal\n"
        "s = StopOnSignal()\n"
        "with s.installed():\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    assert s.signum == signal.SIGTERM\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(30)\n"
        "print('survived')\n"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == -signal.SIGTERM, proc.stderr[-2000:]
    assert "survived" not in proc.stdout
    assert "imagerec: SIGTERM again: stopping now; --resume continues" in proc.stderr


def _event_tags(folder) -> set[str]:
    import tensorflow as tf

    tags = set()
    for path in folder.rglob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            tags.update(value.tag for value in event.summary.value)
    return tags


def test_tensorboard_writes_epoch_figures_only(tmp_path, monkeypatch):
    import keras
    import numpy as np
    import tensorflow.summary as summary  # what Keras's callback writes with

    from imagerec.training.callbacks import EpochTensorBoard

    names: list[str] = []

    class Counting:  # the summary module, recording the name of every scalar handed to it
        def __getattr__(self, attr):
            return getattr(summary, attr)

        def scalar(self, name, *args, **kwargs):
            names.append(name)
            return summary.scalar(name, *args, **kwargs)

    monkeypatch.setattr(EpochTensorBoard, "summary", property(lambda self: Counting()))
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    x, y = np.random.default_rng(0).normal(size=(40, 4)), np.arange(40) % 2
    board = EpochTensorBoard(str(tmp_path / "logs"), write_graph=False, profile_batch=0)
    model.fit(x, y, batch_size=8, epochs=2, validation_data=(x, y), callbacks=[board], verbose=0)
    # no per-batch scalar is even built (Keras's own callback builds one per metric and batch, then drops it)
    assert "epoch_loss" in names and not any(name.startswith("batch_") for name in names), names
    tags = _event_tags(tmp_path / "logs")
    assert {"epoch_loss", "epoch_accuracy"} <= tags
    # per-batch figures are still written when asked for
    every = EpochTensorBoard(str(tmp_path / "every"), write_graph=False, profile_batch=0, update_freq=1)
    model.fit(x, y, batch_size=8, epochs=1, callbacks=[every], verbose=0)
    assert "batch_loss" in _event_tags(tmp_path / "every")
