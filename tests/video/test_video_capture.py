"""RELIABILITY 26: live sources are captured in a supervised child process (imagerec.video.capture).

A stream that stalls mid-stream times out within the read timeout and is reopened with back-off; a capture process
that is killed or hangs is replaced while the parent (and every other stream) carries on; the frame channel holds
at most one unread frame, so a slow consumer gets the newest frame, never a backlog.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import numpy as np
import pytest
from videofactory import mjpeg_server

from imagerec.settings import VideoConfig
from imagerec.video.capture import GRACE_S, FrameChannel, LiveCapture
from imagerec.video.sources import parse_source
from imagerec.video.stream import stream

pytest.importorskip("cv2")
LOGGER = "imagerec.video.capture"


@pytest.fixture(scope="module")
def classifier(trained_run):
    from imagerec import Classifier

    return Classifier.load(trained_run)


def test_frame_channel_holds_at_most_one_unread_frame():
    shape = (48, 64, 3)
    channel = FrameChannel(bytearray(FrameChannel.size(shape, np.uint8)), threading.Lock(), shape, np.uint8)
    channel.reset()
    assert channel.take() is None
    for i in range(10):  # a writer far ahead of its reader
        channel.publish(np.full(shape, i, np.uint8), time_s=float(i))
        assert channel.pending == 1
    assert (channel.published, channel.dropped) == (10, 9)
    seq, time_s, image = channel.take()
    assert (seq, time_s, int(image[0, 0, 0])) == (10, 9.0, 9)  # the newest one
    assert channel.take() is None and channel.pending == 0
    channel.publish(np.full(shape, 42, np.uint8), time_s=10.0)
    image[:] = 0  # the reader's copy is its own
    assert int(channel.take()[2].max()) == 42
    assert FrameChannel.size(shape, np.uint8) == FrameChannel.HEADER_BYTES + 3 * 48 * 64 * 3


def test_slow_consumer_gets_the_newest_frame_not_a_backlog():
    """90 frames at 60 fps, taken every 0.2 s: the others are dropped in the channel and counted."""
    with mjpeg_server("red", frames=90, fps=60) as url:
        capture = LiveCapture(parse_source(url), VideoConfig(reconnects=0), threading.Event(), lambda: None)
        taken, latencies = 0, []
        for _index, captured_at, image in capture.frames():
            latencies.append(time.monotonic() - captured_at)
            taken += 1
            assert image.shape == (48, 64, 3)
            time.sleep(0.2)
    assert capture.dropped > 0 and capture.frames_read == taken + capture.dropped
    assert capture.frames_read >= 60 and taken < 30
    assert max(latencies) < 0.6, latencies  # a backlog would lag by seconds


def test_stream_that_stalls_mid_stream_times_out_and_reconnects_with_back_off(classifier, caplog):
    """The server goes silent with the connection open, then accepts new ones and never answers."""
    caplog.set_level(logging.WARNING, logger=LOGGER)
    with mjpeg_server("green", frames=20, connections=1, hang=True) as url:
        frames = stream(classifier, url, open_timeout_s=1, read_timeout_s=1, reconnects=2, keep_images=False)
        last_result = 0.0
        for _ in frames:
            last_result = time.time()
    summary = frames.summary
    assert summary["reconnects"] == 2 and summary["ended_by"] == "source lost after 2 reconnect attempts"
    assert summary["frames_read"] == 20
    ends = [r.created for r in caplog.records if r.name == LOGGER]
    assert len(ends) == 3, [r.getMessage() for r in caplog.records]
    assert ends[0] - last_result < 1.0 + GRACE_S + 1.0  # the read timeout, the parent's grace, slack
    assert (
        ends[1] - ends[0] >= 0.5 + 0.9 and ends[2] - ends[1] >= 1.0 + 0.9
    )  # back-off, then the open timeout


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "hung"])
def test_capture_process_killed_or_hung_mid_stream_is_replaced(classifier, sig):
    """The capture child is killed (or stopped: a hang) mid-stream; the stream goes on, a bystander is unaffected."""
    with mjpeg_server("blue", frames=60, connections=2) as url, mjpeg_server("red", frames=150) as other:
        bystander = LiveCapture(
            parse_source(other), VideoConfig(reconnects=0), threading.Event(), lambda: None
        )
        arrivals: list[float] = []
        watcher = threading.Thread(target=lambda: [arrivals.append(f[1]) for f in bystander.frames()])
        watcher.start()
        frames = stream(classifier, url, open_timeout_s=2, read_timeout_s=1, reconnects=1, keep_images=False)
        victim, after, pids = None, 0, set()
        for result in frames:
            pids.add(frames.capture_pid)
            if victim is None and result.frame >= 5:
                victim = frames.capture_pid
                os.kill(victim, sig)
            elif victim is not None:
                after += 1
        watcher.join(15)
    summary = frames.summary
    assert summary["reconnects"] == 2 and summary["ended_by"] == "source lost after 1 reconnect attempts"
    assert after > 10 and summary["frames_read"] > 60  # the second connection's frames arrived
    assert len(pids - {victim, None}) >= 1  # by a new capture process
    with pytest.raises(ProcessLookupError):
        os.kill(victim, 0)  # the old one is gone (and reaped)
    assert bystander.reconnects == 0 and bystander.frames_read >= 140
    assert max(np.diff(arrivals)) < 0.5, "the other stream stalled"
