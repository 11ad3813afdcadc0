"""``--out model.tflite`` / ``--out model.onnx``: the artifact file itself, its sidecars beside it, all readable."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from imagerec import Classifier
from imagerec.data.split import read_manifest, rows_for
from imagerec.errors import ImagerecError


def _paths(run: Path) -> list[str]:
    return [r.path for r in rows_for(read_manifest(run / "manifest.csv"), "test")][:6]


def _optional(run: Path) -> list[str]:
    """The sidecars an export copies when the run has them: the OOD reference (every new run), calibration..."""
    from imagerec.export.publish import SIDECARS

    found = [n for n in SIDECARS if n not in ("labels.json", "config.json") and (run / n).exists()]
    assert "reference.npz" in found
    return found


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("fmt, name", [("tflite", "model.tflite"), ("onnx", "classifier.onnx")])
def test_out_file_writes_the_file_and_its_sidecars(run_copy, tmp_path, cli, capsys, fmt, name):
    dest = tmp_path / "deploy" / name
    argv = ["export", str(run_copy), "--format", fmt, "--out", str(dest), "--parity-images", "8"]
    assert cli(argv) == 0, capsys.readouterr().err
    assert dest.is_file(), "the artifact must be a file, not a folder named like one"
    written = {p.name for p in dest.parent.iterdir()}
    sidecars = ("export.json", "labels.json", "config.json", *_optional(run_copy))
    assert written == {name, *(f"{name}.{s}" for s in sidecars)}, written
    record = json.loads((dest.parent / f"{name}.export.json").read_text())
    assert record["artifact"] == name and record["format"] == fmt
    # every file of the export is readable like the artifact (the JSON records were 0600)
    assert {_mode(dest.parent / n) for n in written} == {_mode(dest)}
    assert _mode(dest) & 0o044 == 0o044  # under the usual umask 022

    keras = Classifier.load(run_copy, runtime="keras").predict(_paths(run_copy))
    clf = Classifier.load(dest)
    assert clf.runtime == fmt and clf.labels == ["blue", "green", "red"]
    assert clf.version == record["sha256"][:12]
    assert [p.label for p in clf.predict(_paths(run_copy))] == [p.label for p in keras]

    # exporting again replaces the file in place; a modified file is refused
    assert cli(argv) == 0
    dest.write_bytes(dest.read_bytes() + b"\0")
    with pytest.raises(ImagerecError, match="sha256 mismatch"):
        Classifier.load(dest)


def test_export_directory_files_are_readable(run_copy, cli):
    assert cli(["export", str(run_copy), "--format", "tflite", "--parity-images", "8"]) == 0
    folder = run_copy / "exports" / "tflite"
    modes = {p.name: _mode(p) for p in folder.iterdir()}
    assert set(modes) == {"model.tflite", "export.json", "labels.json", "config.json", *_optional(run_copy)}
    assert set(modes.values()) == {modes["model.tflite"]}, modes
    assert _mode(run_copy / "exports" / "runtime.json") == modes["model.tflite"]


@pytest.mark.parametrize(
    "argv, needle",
    [
        (
            ["--format", "tflite", "--out", "{tmp}/model.onnx"],
            "ends in .onnx, a onnx file, but the format is tflite",
        ),
        (
            ["--format", "savedmodel", "--out", "{tmp}/m.tflite"],
            "but the format is savedmodel; pass a folder",
        ),
        (["--format", "all", "--out", "{tmp}/model.tflite"], "--out must be a folder"),
        (["--format", "tflite", "--out", "{tmp}/old.tflite"], "is an existing folder"),
    ],
)
def test_out_file_that_cannot_be_written_is_one_line(run_copy, tmp_path, capsys, argv, needle):
    from imagerec.cli import main

    (tmp_path / "old.tflite").mkdir()
    with pytest.raises(SystemExit) as info:
        main(["export", str(run_copy), *[a.replace("{tmp}", str(tmp_path)) for a in argv]])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and err.count("\n") == 0 and needle in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.tflite", "run"]
