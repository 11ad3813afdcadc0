"""Multi-label data: the ``path,labels`` CSV, its scan, the stratified split of label sets, multi-hot targets."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import imagefactory as f
import numpy as np
import pytest

from imagerec.data import builtin
from imagerec.data.pipeline import label_array
from imagerec.data.scan import scan_dataset
from imagerec.data.sources import join_labels, load_source, parse_labels
from imagerec.data.split import make_split, read_manifest, rows_for, stratify_sets, write_manifest
from imagerec.errors import DataError


def _csv(root: Path, rows: list[str], header: str = "path,labels") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i, row in enumerate(rows):
        f.write(root / row.split(",")[0], f.png(i, 16))
    (root / "labels.csv").write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return root / "labels.csv"


def test_labels_column_makes_a_multilabel_source_with_the_union_of_names(tmp_path: Path):
    path = _csv(tmp_path / "d", ["a.png,cat;dog", "b.png,", 'c.png,"dog"', "d.png, bird ; cat "])
    source = load_source(path)
    assert source.task == "multilabel" and source.kind == "csv"
    assert source.class_names == ["bird", "cat", "dog"]
    assert [s.label for s in source.samples] == ["cat;dog", "", "dog", "bird;cat"]  # empty field: no label


def test_quoted_labels_field_holds_several_classes(tmp_path: Path):
    path = _csv(tmp_path / "d", ['a.png,"cat;dog",train', "b.png,dog,test"], header="path,labels,split")
    source = load_source(path)
    assert [(s.label, s.split) for s in source.samples] == [("cat;dog", "train"), ("dog", "test")]


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ("cat;;dog", "blank class name"),
        ("cat;", "blank class name"),
        ("cat;cat", "listed twice"),
        ('"cat,dog"', "contains ','; separate the classes of an image with ';'"),
    ],
)
def test_bad_labels_field_is_a_per_row_error(tmp_path: Path, field: str, message: str):
    path = _csv(tmp_path / "d", ["a.png,cat", f"b.png,{field}"])
    with pytest.raises(DataError, match="line 3: ") as err:
        load_source(path)
    assert message in str(err.value)


def test_every_bad_row_is_reported_and_none_dropped(tmp_path: Path):
    path = _csv(tmp_path / "d", ["a.png,Cat", "b.png,cat;dog", "c.png,cat;;x", "d.png,dog"])
    text = (tmp_path / "d" / "labels.csv").read_text() + ",dog\n../up.png,dog\n"
    (tmp_path / "d" / "labels.csv").write_text(text)
    with pytest.raises(DataError) as err:
        load_source(path)
    message = str(err.value)
    assert "4 bad row(s)" in message
    assert "line 4: blank class name" in message
    assert "line 6: empty path" in message
    assert "line 7: path '../up.png' escapes the CSV's folder" in message
    assert "line 3: class 'cat' differs from 'Cat' (line 2) only in case" in message


def test_label_and_labels_columns_together_are_refused(tmp_path: Path):
    path = _csv(tmp_path / "d", ["a.png,cat,cat"], header="path,label,labels")
    with pytest.raises(DataError, match="both 'label' and 'labels'"):
        load_source(path)


def test_parse_labels_sorts_and_keeps_empty():
    assert parse_labels("") == ([], None)
    assert parse_labels("  ") == ([], None)
    assert parse_labels("dog;cat") == (["cat", "dog"], None)
    assert join_labels(["dog", "cat"]) == "cat;dog"


def _multilabel_scan(tmp_path: Path, n: int = 200, seed: int = 0):
    rng = random.Random(seed)
    names = ["a", "b", "c", "d", "rare"]
    rows = []
    for i in range(n):
        present = [x for x in names[:4] if rng.random() < 0.35] + (["rare"] if i % 20 == 0 else [])
        rows.append(f"img/{i:03d}.png,{';'.join(present)}")
    return scan_dataset(_csv(tmp_path / "d", rows), workers=1)


def test_scan_counts_images_per_class_and_label_sets(tmp_path: Path):
    result = _multilabel_scan(tmp_path)
    report = result.to_dict()
    assert report["task"] == "multilabel"
    assert report["classes"]["rare"] == 10
    assert sum(report["classes"].values()) == sum(len(result.names_of(i.label)) for i in result.images)
    assert report["label_sets"]["no_label"] == sum(1 for i in result.images if i.label == "")
    assert report["label_sets"]["max_labels"] <= 5


def test_split_keeps_label_sets_and_stratifies_every_class(tmp_path: Path):
    result = _multilabel_scan(tmp_path)
    rows = make_split(result, val=0.1, test=0.1, seed=3)
    assert len(rows) == 200 and len({r.path for r in rows}) == 200
    given = {i.path: i.label for i in result.images}
    assert all(r.multilabel and r.label == given[r.path] for r in rows)  # the sets travel unchanged
    totals = result.classes
    for split, share in (("train", 0.8), ("val", 0.1), ("test", 0.1)):
        part = rows_for(rows, split)
        assert abs(len(part) - share * 200) <= 3
        counts = Counter(name for r in part for name in r.labels)
        for name, total in totals.items():
            assert abs(counts[name] - share * total) <= 1.5, (split, name, counts[name], total)
    assert make_split(result, val=0.1, test=0.1, seed=3) == rows  # seeded
    assert make_split(result, val=0.1, test=0.1, seed=4) != rows


def test_manifest_keeps_label_sets_in_a_labels_column(tmp_path: Path):
    rows = make_split(_multilabel_scan(tmp_path), seed=1)
    write_manifest(rows, tmp_path / "manifest.csv")
    assert (tmp_path / "manifest.csv").read_text().splitlines()[0] == "path,labels,split,sha256"
    back = read_manifest(tmp_path / "manifest.csv")
    assert back == rows
    assert any(r.labels == [] for r in back) and any(len(r.labels) > 1 for r in back)


def test_stratify_sets_never_divides_a_group():
    class Img:
        def __init__(self, label):
            self.label = label

    groups = [[Img("x"), Img("x;y")], [Img("y")], [Img("")], [Img("x")], *[[Img("y")] for _ in range(6)]]
    parts = stratify_sets(groups, {"test": 0.3}, lambda key: key.split(";") if key else [], random.Random(0))
    assert sum(map(len, parts.values())) == 11
    for g in groups:
        assert sum(all(img in part for img in g) for part in parts.values()) == 1


def test_label_array_is_multi_hot_for_multilabel_rows(tmp_path: Path):
    rows = make_split(_multilabel_scan(tmp_path, n=40), val=0, test=0)
    y = label_array(rows, ["a", "b", "c", "d", "rare"])
    assert y.dtype == np.float32 and y.shape == (40, 5)
    for r, hot in zip(rows, y, strict=True):
        assert sorted(np.array(["a", "b", "c", "d", "rare"])[hot > 0]) == r.labels


def test_builtin_multilabel_writes_images_and_a_labels_csv(tmp_path: Path, monkeypatch):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (6, 28, 56), dtype=np.uint8)
    hot = np.zeros((6, 10), np.uint8)
    hot[np.arange(6), np.arange(6)] = 1
    hot[0, 9] = 1
    spec = builtin.BuiltinDataset(
        "pairs-test", "", builtin.FASHION_CLASSES, lambda: {"train": (images, hot)}, True
    )
    monkeypatch.setitem(builtin.BUILTIN_DATASETS, "pairs-test", spec)
    dest = builtin.write_builtin("pairs-test", tmp_path / "p")
    source = load_source(builtin.dataset_path("pairs-test", dest))
    assert source.task == "multilabel" and len(source.samples) == 6
    assert source.samples[0].label == "Ankle_boot;T-shirt_top"


@pytest.mark.skipif(
    not (builtin.FASHION_DIR / "t10k-images-idx3-ubyte.gz").exists(), reason="no Fashion-MNIST"
)
def test_fashion_mnist_pairs_are_two_real_items_side_by_side():
    arrays = builtin._load_fashion_pairs()
    items, labels = builtin._load_fashion()["test"]
    images, hot = arrays["test"]
    assert images.shape == (5000, 28, 56) and hot.shape == (5000, 10)
    assert set(hot.sum(axis=1)) == {1, 2}  # two items; one class when both share it
    # every test item appears exactly once, on one side of one picture
    halves = np.concatenate([images[:, :, :28], images[:, :, 28:]])
    assert sorted(map(bytes, halves)) == sorted(map(bytes, items))
    assert np.array_equal(builtin._load_fashion_pairs()["test"][0], images)  # fixed pairing
