"""``imagerec serve`` start-up errors: one line, exit 2, before the model loads."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path


def test_a_busy_port_is_one_line_and_exit_2_before_the_model_loads(trained_run):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        exe = str(Path(sys.executable).with_name("imagerec"))
        proc = subprocess.run(
            [exe, "serve", str(trained_run), "--port", str(port)], capture_output=True, text=True, timeout=120
        )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"imagerec: error: 127.0.0.1:{port} is already in use (another server?); choose another with --port N (or --host)"
    ]
    assert "serving" not in proc.stderr


def test_a_host_that_is_not_ours_is_refused(trained_run, capsys):
    import pytest

    from imagerec.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["serve", str(trained_run), "--host", "no-such-host.invalid", "--port", "8000"])
    assert exc.value.code == 2
    assert "--host 'no-such-host.invalid' is not an address of this machine" in capsys.readouterr().err
