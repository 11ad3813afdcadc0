"""Helpers for the hostile-input tests: a bounded subprocess runner and tiny real Keras model files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

_PRELUDE = """
import json, os, resource, sys, time
def _rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
def measure(fn, *args, **kwargs):
    '''Run fn; return (outcome, seconds, peak RSS growth in bytes). Outcome is the exception class name or "ok".'''
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the peak RSS (VmHWM) to the current RSS
    before = _rss("VmRSS:")
    start = time.perf_counter()
    try:
        fn(*args, **kwargs)
        outcome = "ok"
    except Exception as exc:
        outcome = type(exc).__name__ + ":" + getattr(exc, "code", "")
    return outcome, time.perf_counter() - start, _rss("VmHWM:") - before
"""


def run_bounded(body: str, timeout: float = 120.0) -> object:
    """Run ``body`` in a fresh Python with ``measure`` defined; it must print one JSON line last, returned parsed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    code = _PRELUDE + textwrap.dedent(body)
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture
def bounded():
    return run_bounded


def tiny_model(extra_layer=None):
    """A real, tiny Keras functional model (8x8x3 -> 2 classes), optionally with one extra layer."""
    import keras
    from keras import layers

    inputs = keras.Input((8, 8, 3), name="image")
    x = layers.Rescaling(1.0 / 255)(inputs)
    if extra_layer is not None:
        x = extra_layer(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(2, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="tiny")


@pytest.fixture
def tiny_model_file(tmp_path) -> Path:
    """A genuine imagerec model file (``model.keras`` + its sha256 manifest) in a fresh folder."""
    from imagerec.run import save_model_file

    path = tmp_path / "good" / "model.keras"
    save_model_file(tiny_model(), path)
    return path


def rewrite_config(src: Path, dst: Path, edit) -> Path:
    """Copy a ``.keras`` archive with ``edit(config_dict)`` applied to its config.json; write a matching manifest."""
    import zipfile

    from imagerec.run import HASH_SUFFIX
    from imagerec.utils import sha256_file

    dst.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "config.json":
                config = json.loads(data)
                edit(config)
                data = json.dumps(config).encode()
            zout.writestr(info, data)
    Path(str(dst) + HASH_SUFFIX).write_text(json.dumps({"file": dst.name, "sha256": sha256_file(dst)}))
    return dst


def write_manifest(path: Path) -> None:
    from imagerec.run import HASH_SUFFIX
    from imagerec.utils import sha256_file

    Path(str(path) + HASH_SUFFIX).write_text(json.dumps({"file": path.name, "sha256": sha256_file(path)}))
