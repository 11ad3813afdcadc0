"""``StopOnSignal`` in-process: the handlers it installs, what it restores, and an inherited ignored SIGINT."""

from __future__ import annotations

import os
import signal

import pytest

from imagerec.training.callbacks import StopOnSignal


def test_a_signal_is_only_recorded_then_raised_at_the_next_boundary_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    stopper = StopOnSignal()
    with stopper.installed():
        stopper.on_train_batch_end(0)  # nothing requested yet: no-op
        os.kill(os.getpid(), signal.SIGTERM)  # would end pytest without the handler
        assert stopper.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            stopper.on_train_batch_end(1)
        with pytest.raises(KeyboardInterrupt):  # a second signal does not wait for a boundary
            os.kill(os.getpid(), signal.SIGINT)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_an_inherited_ignored_sigint_stays_ignored():
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with StopOnSignal().installed():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    finally:
        signal.signal(signal.SIGINT, old)
