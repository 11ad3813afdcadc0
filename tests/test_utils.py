"""Atomic writes: never half-written, and the file ends up with the mode of any other new file (not 0600)."""

from __future__ import annotations

import os
import stat

import pytest

from imagerec.utils import atomic_write_json, atomic_write_text, new_file_mode


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_a_new_file_gets_the_umask_mode_not_the_temporary_files_0600(tmp_path, umask_022):
    path = tmp_path / "record.json"
    atomic_write_json(path, {"a": 1})
    assert new_file_mode() == 0o644
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert not list(tmp_path.glob(".record.json.*"))  # no temporary left behind


def test_a_replaced_file_keeps_its_mode(tmp_path, umask_022):
    path = tmp_path / "secret.txt"
    path.write_text("old")
    path.chmod(0o600)
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and stat.S_IMODE(path.stat().st_mode) == 0o600


def test_run_directory_files_are_readable_like_its_model(trained_run):
    model_mode = stat.S_IMODE((trained_run / "model.keras").stat().st_mode)
    for name in ("config.json", "labels.json", "metrics.json", "manifest.csv"):
        assert stat.S_IMODE((trained_run / name).stat().st_mode) == model_mode, name
