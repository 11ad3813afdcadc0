"""RELIABILITY B15: the Atheris harness ``fuzz_decode.py`` (run for 60 s by ``.ci/fuzz.sh``) works and bites."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris")

HARNESS = Path(__file__).resolve().parent / "fuzz_decode.py"


def _fuzz(tmp_path: Path, runs: int, plant: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "IMAGEREC_FUZZ_PLANT": plant}
    args = [
        f"-runs={runs}",
        "-seed=1",
        "-rss_limit_mb=1024",
        f"-artifact_prefix={tmp_path}/",
        str(tmp_path / "corpus"),
    ]
    return subprocess.run(
        [sys.executable, str(HARNESS), *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_b15_short_atheris_run_of_the_decoder_is_clean(tmp_path):
    proc = _fuzz(tmp_path, 400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Done 400 runs" in proc.stderr
    assert len(list((tmp_path / "corpus").iterdir())) >= 20  # the seeds were written and run
    assert not list(tmp_path.glob("crash-*"))


@pytest.mark.parametrize(
    "plant, message",
    [("escape", "RuntimeError: planted bug: grey image in fit_size"),
     ("swallowed", "open_image swallowed an unexpected exception: unexpected RuntimeError")],
)  # fmt: skip
def test_b15_harness_reports_an_unexpected_exception_as_a_crash(tmp_path, plant, message):
    """An exception leaving load_image, or one open_image must swallow because it is not a hostile-file error,
    fails the run and saves the input; an ImageRejected never does (the clean run above)."""
    proc = _fuzz(tmp_path, 400, plant)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr  # atheris prints the Python traceback on stdout, libFuzzer on stderr
    assert message in output, output[-3000:]
    assert len(list(tmp_path.glob("crash-*"))) == 1
