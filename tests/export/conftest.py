"""Fixtures of the export tests: one copy of the session's trained run, exported to every format once."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


def run_cli(argv: list[str]) -> int:
    """Run the real CLI entry point in-process; return its exit code."""
    from imagerec.cli import main

    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.fixture
def cli():
    """``cli([...]) -> exit code``: the real ``imagerec`` entry point, in-process."""
    return run_cli


@pytest.fixture(scope="module")
def exported(trained_run: Path, tmp_path_factory) -> tuple[Path, dict]:
    """A private copy of ``trained_run`` with every format and quantization exported: (run, {name: record})."""
    from imagerec import Classifier
    from imagerec.export.exporter import export_records

    run = tmp_path_factory.mktemp("exported") / "run"
    shutil.copytree(trained_run, run)
    _, records = export_records(Classifier.load(run, runtime="keras"), "all")
    return run, {Path(r["path"]).name: r for r in records}


@pytest.fixture
def run_copy(trained_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    return run
