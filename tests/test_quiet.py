"""TensorFlow's start-up chatter stays off the terminal of imagerec's commands, and failures still explain themselves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _fake_tensorflow(root: Path, body: str) -> Path:
    """A stand-in ``tensorflow`` package that writes to fd 2 the way TensorFlow's C++ start-up does."""
    pkg = root / "tensorflow"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        "import os, types\n"
        "os.write(2, b'I0000 port.cc:153] oneDNN custom operations are on\\n')\n"
        f"{body}\n"
        "def _devices(*a):\n"
        "    os.write(2, b'E0000 cuda_platform.cc:52] failed call to cuInit (303)\\n')\n"
        "    return []\n"
        "config = types.SimpleNamespace(list_physical_devices=_devices)\n"
    )
    return root


def _run(code: str, fake: Path, quiet: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "IMAGEREC_TF_QUIET": quiet, "PYTHONPATH": f"{fake}:{ROOT / 'src'}"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)


def test_start_up_chatter_is_caught_when_quiet(tmp_path):
    fake = _fake_tensorflow(tmp_path, "")
    code = "import imagerec, tensorflow as tf; tf.config.list_physical_devices(); print('ok')"
    quiet = _run(code, fake, "1")
    assert quiet.returncode == 0 and quiet.stdout == "ok\n", quiet.stderr
    assert (
        "oneDNN" not in quiet.stderr and quiet.stderr.count("cuInit") == 1 - 1 + 1
    )  # the user's own call speaks
    loud = _run(code, fake, "0")
    assert (
        "oneDNN custom operations" in loud.stderr and loud.stderr.count("cuInit") == 1
    )  # no discovery at import


def test_a_failing_import_replays_what_it_wrote(tmp_path):
    fake = _fake_tensorflow(tmp_path, "raise ImportError('libcudart.so.12: cannot open shared object file')")
    proc = _run("import imagerec, tensorflow", fake, "1")
    assert proc.returncode != 0
    assert "oneDNN custom operations are on" in proc.stderr  # replayed
    assert "libcudart.so.12: cannot open shared object file" in proc.stderr


def test_library_use_changes_nothing_unless_asked(tmp_path):
    fake = _fake_tensorflow(tmp_path, "")
    env = {k: v for k, v in os.environ.items() if k != "IMAGEREC_TF_QUIET"}
    env["PYTHONPATH"] = f"{fake}:{ROOT / 'src'}"
    proc = subprocess.run(
        [sys.executable, "-c", "import imagerec, tensorflow"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert "oneDNN custom operations" in proc.stderr


def test_evaluate_prints_nothing_on_stderr_but_its_own_lines(trained_run):
    exe = str(Path(sys.executable).with_name("imagerec"))
    env = {k: v for k, v in os.environ.items() if k not in ("IMAGEREC_TF_QUIET", "TF_CPP_MIN_LOG_LEVEL")}
    proc = subprocess.run(
        [exe, "evaluate", str(trained_run)], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr
    assert "accuracy" in proc.stdout


def test_quiet_stderr_hides_a_converters_chatter_and_replays_it_on_failure(tmp_path):
    code = (
        "import os, sys\n"
        "os.environ['IMAGEREC_TF_QUIET'] = sys.argv[1]\n"
        "from imagerec.quiet import quiet_stderr\n"
        "with quiet_stderr():\n"
        "    os.write(2, b'fully_quantize: 0, inference_type: 6\\n')\n"
        "print('ok', flush=True)\n"
        "with quiet_stderr():\n"
        "    os.write(2, b'converter: the reason it failed\\n')\n"
        "    raise SystemExit(3)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(
        [sys.executable, "-c", code, "1"], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 3 and proc.stdout == "ok\n"
    assert "fully_quantize" not in proc.stderr and "converter: the reason it failed" in proc.stderr
    loud = subprocess.run(
        [sys.executable, "-c", code, "0"], capture_output=True, text=True, env=env, timeout=60
    )
    assert "fully_quantize" in loud.stderr
