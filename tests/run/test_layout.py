"""The run directory contract: what is a run, and what is said for a folder that is not one."""

from __future__ import annotations

import pytest

from imagerec.errors import RunError
from imagerec.run import RunDir


def test_a_dataset_folder_is_not_a_run(tmp_path):
    from PIL import Image

    for cls in ("cat", "dog"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "train" / cls / "a.png")
    with pytest.raises(RunError, match=r"is not a run directory: it is a folder of images \(a dataset\?\)"):
        RunDir(tmp_path).require()


def test_an_unrelated_folder_is_not_a_run(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(RunError, match="is not a run directory: it is a folder without model.keras"):
        RunDir(tmp_path).require()


def test_a_started_run_without_a_model_is_incomplete(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(RunError, match="is incomplete: model.keras is missing"):
        RunDir(tmp_path).require()


def test_a_missing_folder(tmp_path):
    with pytest.raises(RunError, match="does not exist"):
        RunDir(tmp_path / "nope").require()


def test_cli_says_not_a_run_in_one_line(tmp_path, capsys):
    from imagerec.cli import main

    (tmp_path / "a").mkdir()
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a run directory" in err[0]
