"""``imagerec data inspect | split | clean | builtin`` end to end, and every bad input as one line + exit 2."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import imagefactory as f
import pytest
from imagefactory import cli_fixture, messy_fixture  # noqa: F401 - fixtures "cli", "messy"

from imagerec.data.scan import scan_dataset


def _assert_one_line_error(code: int, out: str, err: str, message: str) -> None:
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("imagerec: error: ") and message in lines[0], lines[0]
    assert "Traceback" not in err + out


def _colour_tree(root: Path, counts: dict[str, int]) -> Path:
    seed = 0
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            f.write(root / name / f"{i}.png", f.png(seed, 32))
            seed += 1
    return root


@pytest.mark.parametrize(
    ("make", "command", "message"),
    [
        (lambda p: p / "missing", "inspect", "does not exist"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "inspect", "has no class folders"),
        (lambda p: _colour_tree(p / "one", {"only": 5}), "split", "a classifier needs at least 2"),
        (lambda p: _colour_tree(p / "zero", {"a": 5, "b": 0}), "split", "class 'b' has no valid images"),
        (
            lambda p: f.write(p / "l.csv", b"file,class\nx.png,a\n"),
            "inspect",
            "expected at least 'path' and 'label'",
        ),
        (
            lambda p: f.write(p / "l.csv", b"path,label\n../../etc/passwd,a\n"),
            "inspect",
            "escapes the CSV's folder",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, cli, make, command: str, message: str):
    data = make(tmp_path)
    args = ["data", command, data] + (["--out", tmp_path / "m.csv"] if command == "split" else [])
    _assert_one_line_error(*cli(*args), message)


def test_bad_input_through_the_console_script(tmp_path: Path):
    proc = f.run_cli_subprocess("data", "inspect", tmp_path / "nowhere")
    _assert_one_line_error(proc.returncode, proc.stdout, proc.stderr, "does not exist")


def test_split_command_writes_a_reproducible_manifest(tmp_path: Path, cli):
    data = _colour_tree(tmp_path / "d", {"a": 10, "b": 10})
    code, out, err = cli("data", "split", data, "--out", tmp_path / "one.csv", "--seed", "3")
    assert code == 0, err
    assert "16 train, 2 val, 2 test" in out
    cli("data", "split", data, "--out", tmp_path / "two.csv", "--seed", "3")
    cli("data", "split", data, "--out", tmp_path / "other.csv", "--seed", "4")
    assert (tmp_path / "one.csv").read_text() == (tmp_path / "two.csv").read_text()
    assert (tmp_path / "one.csv").read_text() != (tmp_path / "other.csv").read_text()
    with (tmp_path / "one.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["path", "label", "split", "sha256"]


def test_clean_moves_bad_files_keeps_paths_logs_and_deletes_nothing(messy, tmp_path: Path, cli):
    root, expected = messy
    before = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    quarantine = tmp_path / "quarantine"
    code, out, err = cli("data", "clean", root, "--quarantine", quarantine, "--duplicates")
    assert code == 0, err
    # the invalid files, and both copies of the picture filed under cat and dog: a label conflict without a
    # majority, so neither label can be trusted
    moved = 7 + 2
    assert f"moved {moved} file(s)" in out
    assert (
        "label conflict: the same picture is in 'cat' x1, 'dog' x1; no majority, so no copy was kept" in out
    )
    log = [json.loads(line) for line in (quarantine / "quarantine.jsonl").read_text().splitlines()]
    assert len(log) == moved
    assert {e["from"] for e in log} == set(expected["invalid"]) | set(expected["duplicates"][0])
    assert all(
        e["reason"].startswith("label conflict") for e in log if e["from"] in expected["duplicates"][0]
    )
    after = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    kept = {
        p.relative_to(quarantine): p.read_bytes()
        for p in quarantine.rglob("*")
        if p.is_file() and p.name != "quarantine.jsonl"
    }
    assert {**after, **kept} == before  # every byte is still somewhere, under the same relative path
    assert not set(after) & set(kept)
    report = scan_dataset(root).to_dict()
    assert report["invalid"] == [] and report["duplicates"] == []
    assert report["num_images"] == expected["num_images"] - 2
    assert report["near_duplicates"] == expected["near_duplicates"]  # only reported, never moved


def test_clean_keeps_the_majority_copy_of_a_label_conflict_and_says_why(tmp_path: Path, cli):
    data = _colour_tree(tmp_path / "d", {"a": 3, "b": 3})
    shared = f.png(77)
    for path in (data / "a" / "x1.png", data / "a" / "x2.png", data / "b" / "x3.png"):
        f.write(path, shared)
    f.write(data / "b" / "same1.png", f.png(78))
    f.write(data / "b" / "same2.png", f.png(78))
    quarantine = tmp_path / "q"
    code, out, err = cli("data", "clean", data, "--quarantine", quarantine, "--duplicates")
    assert code == 0, err
    kept = str(data / "a" / "x1.png")
    assert (
        f"label conflict: the same picture is in 'a' x2, 'b' x1; kept {kept} ('a' holds most copies)" in out
    )
    log = {
        e["from"]: e["reason"]
        for e in map(json.loads, (quarantine / "quarantine.jsonl").read_text().splitlines())
    }
    assert set(log) == {str(data / "a" / "x2.png"), str(data / "b" / "x3.png"), str(data / "b" / "same2.png")}
    assert (
        log[str(data / "b" / "same2.png")]
        == f"duplicate of {data / 'b' / 'same1.png'} (kept: the first copy by path)"
    )
    assert (data / "a" / "x1.png").exists() and (data / "b" / "same1.png").exists()


def test_inspect_names_label_conflicts_and_ignored_files(messy, cli):
    root, _ = messy
    code, out, err = cli("data", "inspect", root)
    assert code == 0, err
    assert "label conflicts: 1 group(s)" in out
    assert "notes.txt" in out and "readme.txt" in out  # the ignored files by name, not only their count


def test_symlinks_out_of_the_dataset_are_refused_unless_followed(tmp_path: Path, cli, caplog):
    pool = _colour_tree(tmp_path / "pool", {"a": 4, "b": 4})
    subset = tmp_path / "subset"
    for cls in ("a", "b"):
        (subset / cls).mkdir(parents=True)
        for src in sorted((pool / cls).iterdir())[:3]:
            (subset / cls / src.name).symlink_to(src)
    code, out, err = cli("data", "inspect", subset, "--json")
    report = json.loads(out)
    assert code == 0 and report["num_images"] == 0 and len(report["invalid"]) == 6
    assert "pass --follow-symlinks" in report["invalid"][0]["reason"]
    code, out, err = cli("data", "inspect", subset, "--json", "--follow-symlinks")
    report = json.loads(out)
    assert code == 0 and report["num_images"] == 6 and report["invalid"] == []
    code, out, err = cli("data", "split", subset, "--out", tmp_path / "m.csv", "--follow-symlinks")
    assert code == 0 and "wrote" in out, err
    code, out, err = cli(
        "data", "clean", subset, "--quarantine", tmp_path / "q"
    )  # links are not broken files
    assert code == 0 and "moved 0 file(s)" in out
    # a library warning (logging): the CLI shows it on stderr through logging's last-resort handler
    assert "left 6 symlink(s) that point outside" in caplog.text and "--follow-symlinks" in caplog.text
    assert len(list(subset.rglob("*.png"))) == 6


def test_clean_twice_never_overwrites_the_quarantine(tmp_path: Path, cli):
    data = _colour_tree(tmp_path / "d", {"a": 2, "b": 2})
    quarantine = tmp_path / "q"
    for content in (b"", b"not an image"):
        f.write(data / "a" / "bad.jpg", content)
        assert cli("data", "clean", data, "--quarantine", quarantine)[0] == 0
    assert sorted(p.read_bytes() for p in (quarantine / "a").iterdir()) == [b"", b"not an image"]
    assert len((quarantine / "quarantine.jsonl").read_text().splitlines()) == 2


def test_clean_refuses_a_quarantine_inside_the_data(tmp_path: Path, cli):
    data = _colour_tree(tmp_path / "d", {"a": 2, "b": 2})
    _assert_one_line_error(
        *cli("data", "clean", data, "--quarantine", data / "q"), "outside the dataset folder"
    )


def test_builtin_command_and_its_errors(tmp_path: Path, cli):
    code, out, err = cli("data", "builtin", "digits", tmp_path / "digits", "--limit", "30")
    assert code == 0, err
    assert len(list((tmp_path / "digits").rglob("*.png"))) == 30
    _assert_one_line_error(
        *cli("data", "builtin", "imagenet", tmp_path / "x"), "unknown built-in dataset 'imagenet'"
    )
    f.write(tmp_path / "full" / "mine.txt", b"user file")
    _assert_one_line_error(*cli("data", "builtin", "digits", tmp_path / "full"), "choose an empty folder")
