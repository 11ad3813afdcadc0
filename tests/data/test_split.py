"""Stratified, seeded split into a manifest; duplicates stay on one side; given splits are respected."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import imagefactory as f
import pytest
from PIL import Image

from imagerec.data.scan import scan_dataset
from imagerec.data.split import make_split, manifest_text, read_manifest, write_manifest
from imagerec.errors import DataError


def _classes(root: Path, counts: dict[str, int], start: int = 0, size: int = 16) -> Path:
    seed = start
    for name, n in counts.items():
        for i in range(n):
            f.write(root / name / f"{i:03d}.png", f.png(seed, size))
            seed += 1
    return root


@pytest.fixture(scope="module")
def scanned(tmp_path_factory):
    root = _classes(tmp_path_factory.mktemp("split") / "d", {"a": 40, "b": 20, "c": 10})
    return scan_dataset(root, workers=1)


def test_stratified_80_10_10(scanned):
    rows = make_split(scanned)
    counts = Counter((r.label, r.split) for r in rows)
    assert counts == {
        ("a", "train"): 32, ("a", "val"): 4, ("a", "test"): 4,
        ("b", "train"): 16, ("b", "val"): 2, ("b", "test"): 2,
        ("c", "train"): 8, ("c", "val"): 1, ("c", "test"): 1,
    }  # fmt: skip
    assert len({r.path for r in rows}) == len(rows) == 70


def test_same_seed_same_manifest_different_seed_different(scanned, tmp_path: Path):
    one, two, other = make_split(scanned, seed=1), make_split(scanned, seed=1), make_split(scanned, seed=2)
    assert manifest_text(one) == manifest_text(two)
    assert manifest_text(one) != manifest_text(other)
    digest = write_manifest(one, tmp_path / "manifest.csv")
    assert read_manifest(tmp_path / "manifest.csv") == one
    assert write_manifest(two, tmp_path / "again.csv") == digest


def test_configurable_fractions(scanned):
    counts = Counter(r.split for r in make_split(scanned, val=0.2, test=0.0))
    assert counts == {"train": 56, "val": 14}


def test_exact_and_near_duplicates_stay_on_one_side(tmp_path: Path):
    root = _classes(tmp_path / "d", {"a": 12, "b": 12}, size=32)
    for i in range(4):  # the same bytes filed under both classes, and re-encodings of a's pictures
        f.write(root / "b" / f"copy_{i}.png", (root / "a" / f"{i:03d}.png").read_bytes())
        Image.open(root / "a" / f"{i + 4:03d}.png").convert("RGB").save(
            root / "a" / f"re_{i}.jpg", quality=80
        )
    result = scan_dataset(root, workers=1)
    assert len(result.duplicates) == 4 and len(result.near_duplicates) == 4
    for seed in range(6):
        rows = make_split(result, seed=seed)
        side = {r.path: r.split for r in rows}
        for group in result.duplicates + result.near_duplicates:
            assert len({side[p] for p in group if p in side}) == 1, (seed, group)
        held_out = {r.sha256 for r in rows if r.split != "train"}
        assert not [r for r in rows if r.split == "train" and r.sha256 in held_out]


def test_given_splits_are_respected_and_test_never_trains(tmp_path: Path):
    root = tmp_path / "d"
    _classes(root / "train", {"a": 10, "b": 10}, start=0)
    _classes(root / "val", {"a": 2, "b": 2}, start=100)
    _classes(root / "test", {"a": 3, "b": 3}, start=200)
    rows = make_split(scan_dataset(root, workers=1), val=0.3, test=0.3)
    by_split = {
        s: sorted(Path(r.path).relative_to(root).parts[0] for r in rows if r.split == s)
        for s in ("train", "val", "test")
    }
    assert by_split == {"train": ["train"] * 20, "val": ["val"] * 4, "test": ["test"] * 6}


def test_missing_val_is_carved_from_train_only(tmp_path: Path):
    root = tmp_path / "d"
    _classes(root / "train", {"a": 20, "b": 20}, start=0)
    _classes(root / "test", {"a": 5, "b": 5}, start=100)
    rows = make_split(scan_dataset(root, workers=1), val=0.1, test=0.1)
    origin = Counter((Path(r.path).relative_to(root).parts[0], r.split) for r in rows)
    assert origin == {("train", "train"): 36, ("train", "val"): 4, ("test", "test"): 10}


def test_identical_file_in_train_and_test_folders_is_dropped_from_train(tmp_path: Path):
    root = tmp_path / "d"
    _classes(root / "train", {"a": 5, "b": 5})
    _classes(root / "test", {"a": 2, "b": 2}, start=100)
    f.write(root / "train" / "a" / "leak.png", (root / "test" / "b" / "000.png").read_bytes())
    rows = make_split(scan_dataset(root, workers=1), val=0.2)
    assert str(root / "train" / "a" / "leak.png") not in {r.path for r in rows}
    assert str(root / "test" / "b" / "000.png") in {r.path for r in rows if r.split == "test"}


@pytest.mark.parametrize(
    ("counts", "kwargs", "message"),
    [
        ({"a": 10}, {}, "a classifier needs at least 2"),
        ({"a": 10, "b": 0}, {}, "class 'b' has no valid images"),
        ({"a": 10, "b": 2}, {}, "class 'b' has 2 image"),
        ({"a": 10, "b": 10}, {"val": 0.6, "test": 0.5}, "must be in \\[0, 1\\) and sum below 1"),
    ],
)
def test_unsplittable_data(tmp_path: Path, counts, kwargs, message):
    root = _classes(tmp_path / "d", counts)
    for name in counts:
        (root / name).mkdir(parents=True, exist_ok=True)
        if counts[name] == 0:
            f.write(root / name / "broken.jpg", b"")
    with pytest.raises(DataError, match=message):
        make_split(scan_dataset(root, workers=1), **kwargs)


def test_read_manifest_refuses_other_files(tmp_path: Path):
    with pytest.raises(DataError, match="is missing"):
        read_manifest(tmp_path / "none.csv")
    (tmp_path / "other.csv").write_text("path,label\na.png,cat\n")
    with pytest.raises(DataError, match="not an imagerec manifest"):
        read_manifest(tmp_path / "other.csv")


def test_a_dataset_without_splits_joins_the_train_part_of_one_with_fixed_splits(tmp_path: Path):
    """``imagerec train builtin:fashion-mnist reviewed/``: the reviewed pictures train (and validate); the fixed
    test set stays exactly the first dataset's, the one ``compare --gate`` judges both runs on."""
    from imagerec.data.sources import load_sources

    fixed, extra = tmp_path / "fixed", tmp_path / "reviewed"
    _classes(fixed / "train", {"a": 20, "b": 20}, start=0)
    _classes(fixed / "test", {"a": 5, "b": 5}, start=100)
    _classes(extra, {"a": 10, "b": 10}, start=200)
    source = load_sources([fixed, extra])
    rows = make_split(scan_dataset(source, workers=1), val=0.1, test=0.1)
    origin = Counter((Path(r.path).parent.parent.name, r.split) for r in rows)
    assert origin[("test", "test")] == 10
    assert {split for (where, split) in origin if where == "reviewed"} <= {"train", "val"}
    assert sum(n for (where, _), n in origin.items() if where == "reviewed") == 20
    assert sum(n for (_, split), n in origin.items() if split == "test") == 10
