"""Every dataset source kind, read through ``load_source``, and the bad inputs it refuses."""

from __future__ import annotations

import os
from pathlib import Path

import imagefactory as f
import pytest

from imagerec.data.sources import load_source
from imagerec.errors import DataError


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        f.write(root / rel, data)
    return root


def test_class_folders_with_nested_subfolders_hidden_and_non_image_files(tmp_path: Path):
    root = _tree(
        tmp_path / "d",
        {
            "cat/a.png": f.png(1),
            "cat/2024/summer/b.jpg": f.jpeg(2),
            "cat/.hidden.png": f.png(3),
            "cat/._a.png": b"AppleDouble",
            "cat/.DS_Store": b"Bud1",
            "cat/notes.txt": b"x",
            "dog/c.png": f.png(4),
            ".git/config.png": f.png(5),  # hidden folders are not classes
            "README.md": b"# data",
        },
    )
    source = load_source(root)
    assert source.kind == "folder"
    assert source.class_names == ["cat", "dog"]
    assert sorted((Path(s.path).relative_to(root).as_posix(), s.label) for s in source.samples) == [
        ("cat/2024/summer/b.jpg", "cat"),
        ("cat/a.png", "cat"),
        ("dog/c.png", "dog"),
    ]
    assert source.ignored == 5  # .hidden.png, ._a.png, .DS_Store, notes.txt, README.md
    assert not source.has_splits


@pytest.mark.parametrize("val_name", ["val", "validation"])
def test_split_folders_are_respected(tmp_path: Path, val_name: str):
    files = {f"{split}/{c}/{i}.png": f.png(i * 10 + k) for k, split in enumerate(("train", val_name, "test"))
             for c in ("a", "b") for i in range(2)}  # fmt: skip
    source = load_source(_tree(tmp_path / "d", files))
    assert source.kind == "splits"
    assert source.class_names == ["a", "b"]
    splits = {(Path(s.path).parts[-3], s.split) for s in source.samples}
    assert splits == {("train", "train"), (val_name, "val"), ("test", "test")}


def test_loose_files_beside_split_and_class_folders_are_ignored_and_counted(tmp_path: Path):
    files = {
        "train/a/1.png": f.png(1),
        "train/b/2.png": f.png(2),
        "test/a/3.png": f.png(3),
        "test/b/4.png": f.png(4),
    }
    root = _tree(
        tmp_path / "d", {**files, "README.md": b"x", "train/labels.txt": b"x", "test/.DS_Store": b"x"}
    )
    source = load_source(root)
    assert source.kind == "splits" and len(source.samples) == 4 and source.ignored == 3


def test_split_folders_without_val(tmp_path: Path):
    files = {
        f"{split}/{c}/{i}.png": f.png(100 * (split == "test") + 10 * (c == "b") + i)
        for split in ("train", "test")
        for c in "ab"
        for i in range(2)
    }
    source = load_source(_tree(tmp_path / "d", files))
    assert source.kind == "splits"
    assert {s.split for s in source.samples} == {"train", "test"}


def test_csv_with_relative_paths_and_optional_split_column(tmp_path: Path):
    root = _tree(
        tmp_path / "d", {"img/1.png": f.png(1), "img/2.png": f.png(2), "img/sub dir/3.png": f.png(3)}
    )
    (root / "labels.csv").write_text(
        "path,label,split\nimg/1.png,cat,train\nimg/2.png,dog,validation\nimg/sub dir/3.png,dog,\n",
        encoding="utf-8",
    )
    source = load_source(root / "labels.csv")
    assert source.kind == "csv"
    assert source.class_names == ["cat", "dog"]
    assert [(Path(s.path).name, s.label, s.split) for s in source.samples] == [
        ("1.png", "cat", "train"),
        ("2.png", "dog", "val"),
        ("3.png", "dog", None),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("file,class\na.png,cat\n", "expected at least 'path' and 'label'"),
        ("", "expected at least 'path' and 'label'"),
        ("path,label\n../outside.png,cat\n", "escapes the CSV's folder"),
        ("path,label\n/etc/passwd,cat\n", "escapes the CSV's folder"),
        ("path,label\nimg/../../x.png,cat\n", "escapes the CSV's folder"),
        ("path,label\na.png,\n", "empty path or label"),
        ("path,label\n", "lists no images"),
    ],
)
def test_csv_problems_raise_data_error(tmp_path: Path, text: str, message: str):
    csv_path = tmp_path / "d" / "labels.csv"
    csv_path.parent.mkdir()
    csv_path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        load_source(csv_path)


def test_csv_that_is_not_utf8(tmp_path: Path):
    path = tmp_path / "labels.csv"
    path.write_bytes(b"path,label\n\xff\xfe\xfa.png,cat\n")
    with pytest.raises(DataError, match="not UTF-8"):
        load_source(path)


def test_symlink_leaving_the_root_is_invalid(tmp_path: Path):
    outside = f.write(tmp_path / "outside" / "secret.png", f.png(1))
    root = _tree(tmp_path / "d", {"cat/a.png": f.png(2), "dog/b.png": f.png(3)})
    os.symlink(outside, root / "cat" / "link.png")
    os.symlink(root / "dog" / "b.png", root / "cat" / "inside_link.png")
    os.symlink(tmp_path / "outside", root / "bird")  # a class folder that is a link out: its plain files too
    source = load_source(root)
    assert [i["path"] for i in source.invalid] == [
        str(root / "bird" / "secret.png"),
        str(root / "cat" / "link.png"),
    ]
    assert all("outside the dataset root" in i["reason"] for i in source.invalid)
    assert str(root / "cat" / "inside_link.png") in {s.path for s in source.samples}
    assert load_source(root, follow_symlinks=True).invalid == []


def test_a_symlink_loop_is_invalid_not_a_crash(tmp_path: Path):
    root = _tree(tmp_path / "d", {"cat/a.png": f.png(2), "dog/b.png": f.png(3)})
    os.symlink(root / "cat" / "loop2.png", root / "cat" / "loop1.png")
    os.symlink(root / "cat" / "loop1.png", root / "cat" / "loop2.png")
    os.symlink("a.png", root / "cat" / "relative.png")  # relative links resolve against their folder
    source = load_source(root)
    assert sorted(i["path"] for i in source.invalid) == [
        str(root / "cat" / "loop1.png"),
        str(root / "cat" / "loop2.png"),
    ]
    assert all("symlink loop" in i["reason"] for i in source.invalid)
    assert str(root / "cat" / "relative.png") in {s.path for s in source.samples}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing", "does not exist"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "has no class folders"),
        (lambda p: f.write(p / "x.png", f.png(1)), "not a .csv"),
        (lambda p: (p / "s" / "train").mkdir(parents=True) or p / "s", "no class folders inside them"),
    ],
)
def test_bad_dataset_paths(tmp_path: Path, make, message: str):
    with pytest.raises(DataError, match=message):
        load_source(make(tmp_path))


def test_builtin_source_is_materialised_once(imagerec_home: Path):
    source = load_source("builtin:digits")
    assert source.kind == "folder"
    assert source.class_names == [str(i) for i in range(10)]
    assert len(source.samples) == 1797
    again = load_source("builtin:digits")
    assert again.root == source.root and len(again.samples) == 1797
    with pytest.raises(DataError, match="unknown built-in dataset 'nope'"):
        load_source("builtin:nope")
