"""Fixtures of the data-stage tests: the messy folder, and a helper to run the real CLI in-process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from imagefactory import write_messy


@pytest.fixture
def messy(tmp_path: Path) -> tuple[Path, dict]:
    """The issue's messy folder and what inspect must report for it."""
    root = tmp_path / "messy data"
    return root, write_messy(root)


@pytest.fixture
def cli(capsys):
    """Run ``imagerec ARGS`` through ``imagerec.cli.main`` (the console script): returns (exit code, out, err)."""
    from imagerec.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def run_cli_subprocess(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """The installed entry point in a fresh process, exactly as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "imagerec", *map(str, args)], capture_output=True, text=True, timeout=timeout
    )
