"""The top-level ``imagerec`` command: ``--version`` (asked for by SECURITY.md in every report) and bare help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import imagerec
from imagerec.cli import main


def test_version_prints_the_package_version_and_exits_0(capsys):
    try:
        main(["--version"])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    assert code == 0
    assert capsys.readouterr().out == f"imagerec {imagerec.__version__}\n"


def test_version_from_the_console_script():
    exe = Path(sys.executable).with_name("imagerec")
    proc = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"imagerec {imagerec.__version__}"
    assert "Traceback" not in proc.stderr


def test_commands_still_run_after_the_version_option_was_added(capsys):
    try:
        main(["data", "--help"])
    except SystemExit as exc:
        assert int(exc.code or 0) == 0
    assert "inspect" in capsys.readouterr().out


def test_help_lists_commands_in_pipeline_order(capsys):
    import re

    try:
        main(["--help"])
    except SystemExit as exc:
        assert int(exc.code or 0) == 0
    commands = capsys.readouterr().out.split("Commands", 1)[1]
    listed = re.findall(r"^│ ([a-z-]+) ", commands, flags=re.M)
    expected = ["demo", "data", "train", "lr-find", "models", "evaluate", "calibrate", "explain", "compare",
                "report", "predict", "embed", "serve", "monitor", "review", "video", "export", "benchmark"]  # fmt: skip
    assert listed == expected
