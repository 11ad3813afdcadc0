"""TensorFlow's start-up chatter, kept off the terminal of the ``imagerec`` commands.

TensorFlow 2.21 writes its start-up notices from C++ *before* its logging is initialised ("All log messages before
absl::InitializeLog() is called are written to STDERR", the oneDNN notice, "Could not find cuda drivers", and at
device discovery "failed call to cuInit ... (303)" on a machine without a GPU). ``TF_CPP_MIN_LOG_LEVEL`` does not
reach them, so they are caught where they are written: file descriptor 2, while TensorFlow is imported and its
devices are discovered. What was written there is replayed if the import fails, so a broken installation still
explains itself. ``imagerec --verbose`` (or ``IMAGEREC_TF_QUIET=0``) shows everything.

The CLI turns this on (``IMAGEREC_TF_QUIET=1``, inherited by its worker processes); importing imagerec as a
library changes nothing unless that variable is set.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import sys
import tempfile
from collections.abc import Iterator

ENV = "IMAGEREC_TF_QUIET"


@contextlib.contextmanager
def captured_fd2() -> Iterator[tempfile.SpooledTemporaryFile]:
    """Point file descriptor 2 (what C++ writes to) at a temporary file for the duration; yield that file."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = os.dup(2)
    sink = tempfile.TemporaryFile()
    try:
        os.dup2(sink.fileno(), 2)
        try:
            yield sink
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
    finally:
        os.close(saved)
        sink.close()


class _QuietLoader(importlib.abc.Loader):
    """Runs TensorFlow's own loader with fd 2 captured, then discovers its devices inside the same window."""

    def __init__(self, loader: importlib.abc.Loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        failure: BaseException | None = None
        with captured_fd2() as sink:
            try:
                self.loader.exec_module(module)
                module.config.list_physical_devices()  # cuInit and friends speak here, once per process
            except BaseException as exc:  # noqa: BLE001 - re-raised below, once fd 2 is the terminal again
                failure = exc
                sink.seek(0)
                written = sink.read()
        if failure is not None:
            os.write(2, written)
            raise failure


class _TensorFlowFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)  # once: the real finders take it from here
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Under the CLI (``IMAGEREC_TF_QUIET=1``): keep a library's C++/Python chatter (converters, delegates) off the
    terminal for the duration, replaying it if the block fails; elsewhere a no-op."""
    if os.environ.get(ENV) != "1":
        yield
        return
    import logging

    tf_logger = logging.getLogger("tensorflow")
    level = tf_logger.level
    written = b""
    tf_logger.setLevel(logging.ERROR)  # TensorFlow's Python deprecation notices (tf2onnx calls old APIs)
    try:
        with captured_fd2() as sink:
            try:
                yield
            except BaseException:
                sink.seek(0)
                written = sink.read()
                raise
    finally:
        tf_logger.setLevel(level)
        if written:
            os.write(2, written)


def quiet_tensorflow() -> None:
    """Catch TensorFlow's start-up chatter when it is first imported (no-op when it already is, or is disabled)."""
    if os.environ.get(ENV) != "1" or "tensorflow" in sys.modules:
        return
    if not any(isinstance(finder, _TensorFlowFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _TensorFlowFinder())


__all__ = ["ENV", "captured_fd2", "quiet_stderr", "quiet_tensorflow"]
