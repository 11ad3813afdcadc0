"""``imagerec predict``: files, folders, globs; table / JSON lines / CSV; per-file errors and exit codes."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagefixtures import run_cli as imagerec_cli

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def _image(colour, rng) -> np.ndarray:  # the generator of tests/conftest.py:make_image
    base = np.array(colour, dtype=np.float32)[None, None, :]
    img = base + rng.normal(0, 25, (32, 32, 3))
    y, x = rng.integers(0, 24, 2)
    img[y : y + 8, x : x + 8] = 255 - base
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    rng = np.random.default_rng(7)
    root = tmp_path / "imgs"
    for name, colour in COLOURS.items():
        (root / "sub" / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(_image(colour, rng)).save(root / "sub" / name / f"{name}{i}.png")
    (root / "notes.txt").write_text("not an image")  # ignored in a folder (not an image extension)
    return root


def _labels(run: Path, paths: list[str]) -> list[str]:
    from imagerec.classifier import Classifier

    return [p.label for p in Classifier.load(run, runtime="keras").predict(paths)]


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    return imagerec_cli(capsys, "predict", *args)


def test_folder_json_lines(trained_run, images, capsys):
    code, out, err = run_cli(
        capsys, str(trained_run), str(images), "--format", "json", "--top-k", "2", "--batch-size", "4"
    )
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 6
    expected = _labels(trained_run, [row["path"] for row in rows])
    assert [row["label"] for row in rows] == expected  # the CLI answers what the Python API answers
    assert (
        sum(row["label"] == Path(row["path"]).parent.name for row in rows) >= 4
    )  # and mostly right (the run is >= 80 % accurate)
    for row in rows:
        assert set(row) == {"path", "label", "confidence", "top_k", "ood_score", "runtime"}
        assert row["ood_score"] >= 0  # the run has an embedding reference
        assert row["runtime"] == "keras"  # the runtime that answered (the run has no exports)
        assert [t["label"] for t in row["top_k"]][0] == row["label"] and len(row["top_k"]) == 2


def test_glob_csv_and_bad_files(trained_run, images, tmp_path, capsys):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"x" * 20)
    (tmp_path / "fake.jpg").write_text("hello")
    pattern = str(images / "**" / "red*.png")
    code, out, err = run_cli(
        capsys,
        str(trained_run),
        pattern,
        str(tmp_path / "broken.png"),
        str(tmp_path / "fake.jpg"),
        str(tmp_path / "missing.png"),
        "-f",
        "csv",
    )
    assert code == 1
    assert "3 of 5 input(s) failed" in err
    rows = list(csv.DictReader(io.StringIO(out)))
    by_name = {Path(r["path"]).name: r for r in rows}
    red = [str(p) for p in sorted((images / "sub" / "red").glob("*.png"))]
    assert [by_name[Path(p).name]["label"] for p in red] == _labels(trained_run, red)
    assert by_name["broken.png"]["error"].startswith(("corrupt", "truncated"))
    assert by_name["fake.jpg"]["error"].startswith("unsupported_format")
    assert by_name["missing.png"]["error"].startswith("not_found")


def test_table_output(trained_run, images, capsys):
    code, out, _ = run_cli(capsys, str(trained_run), str(images / "sub" / "blue" / "blue0.png"))
    assert code == 0
    assert "blue0.png" in out and "blue" in out and "confidence" in out


def test_user_errors_exit_2_with_one_line(tmp_path, images, capsys):
    code, _, err = run_cli(capsys, str(tmp_path / "no-run"), str(images))
    assert code == 2 and "does not exist" in err and "Traceback" not in err
    code, _, err = run_cli(capsys, str(tmp_path / "no-run"), str(images), "--format", "xml")
    assert code == 2 and "--format 'xml'" in err


def test_console_script_end_to_end(trained_run, images):
    exe = Path(sys.executable).with_name("imagerec")
    proc = subprocess.run(
        [str(exe), "predict", str(trained_run), str(images / "sub" / "green"), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["label"] for r in rows] == _labels(trained_run, [r["path"] for r in rows])
    assert [Path(r["path"]).name for r in rows] == ["green0.png", "green1.png"]
