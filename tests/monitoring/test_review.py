"""The review queue (``imagerec review``): dedup, diversity, unsure/OOD before sure, size cap, atomic folder; and
the label store behind the Review tab: class folders, refused labels, last write wins under concurrent writers."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from imagefixtures import run_cli
from imagerec.errors import ImagerecError
from imagerec.monitoring.labels import LabelRefused, LabelStore
from imagerec.monitoring.records import encode_embedding
from imagerec.monitoring.review import build_queue, read_queue, uncertainty_of
from imagerec.settings import ReviewSettings

CLASSES = ["cat", "dog", "fox"]


def write_records(root: Path, rows: list[dict]) -> Path:
    """Records in the documented format (``imagerec.monitoring.records``), each with its own tiny picture."""
    (root / "records").mkdir(parents=True)
    (root / "images").mkdir()
    lines = []
    for i, row in enumerate(rows):
        digest = row.pop("sha", sha(i))
        name = f"images/{digest[:16]}.png"
        (root / name).write_bytes(b"\x89PNG fake " + digest.encode())
        emb = np.asarray(row.pop("emb"), np.float32)
        top = row.pop("top")
        rec = {
            "time": 1000.0 + i, "source": "serve", "label": top[0][0], "confidence": top[0][1], "top_k": top,
            "ood_score": row.pop("ood", 1.0), "reason": None, "labels": None,
            "embedding": encode_embedding(emb / np.linalg.norm(emb)), "sha256": digest, "image": name, "why": "sample",
        }  # fmt: skip
        lines.append(json.dumps(rec | row) + "\n")
    (root / "records" / "records-20261207T000000-1-0001.jsonl").write_text("".join(lines))
    return root


def sha(key: object) -> str:
    return hashlib.sha256(str(key).encode()).hexdigest()


def direction(k: int, dims: int = 8, jitter: float = 0.0, seed: int = 0) -> np.ndarray:
    v = np.zeros(dims)
    v[k] = 1.0
    return v + np.random.default_rng(seed).normal(0, jitter, dims)


def test_uncertainty_is_one_minus_the_margin_and_threshold_closeness_for_multilabel():
    assert uncertainty_of({"top_k": [["cat", 0.5], ["dog", 0.4]]}) == pytest.approx(0.9)
    assert uncertainty_of({"top_k": [["cat", 0.99], ["dog", 0.01]]}) == pytest.approx(0.02)
    multi = {"labels": ["cat"], "top_k": [["cat", 0.3], ["dog", 0.1]]}
    assert uncertainty_of(multi, {"cat": 0.3}) == pytest.approx(1.0)


def test_queue_prefers_unsure_and_ood_spreads_out_drops_duplicates_and_caps_the_size(tmp_path):
    rows = []
    # 10 sure, in-distribution pictures, all near direction 0
    rows += [
        {"top": [["cat", 0.99], ["dog", 0.01]], "ood": 1.0, "emb": direction(0, jitter=0.3, seed=i)}
        for i in range(10)
    ]
    # 3 unsure, far pictures in three different directions, one of them recorded twice (same sha256)
    far = {k: sha(f"far{k}") for k in (3, 4, 5)}
    for k in (3, 4, 5):
        rows.append(
            {"top": [["dog", 0.4], ["fox", 0.35]], "ood": 50.0 + k, "emb": direction(k), "sha": far[k]}
        )
    rows.append({"top": [["dog", 0.4], ["fox", 0.35]], "ood": 53.0, "emb": direction(3), "sha": far[3]})
    # near duplicates of the direction-4 picture (other sha256s, cosine distance ~0)
    dups = {sha(f"dup{i}") for i in range(4)}
    for i, digest in enumerate(sorted(dups)):
        emb = direction(4, jitter=1e-4, seed=i)
        rows.append({"top": [["fox", 0.4], ["dog", 0.39]], "ood": 60.0, "emb": emb, "sha": digest})
    write_records(tmp_path / "rec", rows)
    meta = build_queue(tmp_path / "rec", tmp_path / "queue", ReviewSettings(size=5), CLASSES)
    queue = read_queue(tmp_path / "queue")
    assert meta["size"] == len(queue.items) == 5 and meta["classes"] == CLASSES
    assert len({it["sha256"] for it in queue.items}) == 5  # no sha256 twice
    top3 = queue.items[:3]
    assert all(it["ood_score"] >= 50 for it in top3)  # the unsure, far pictures first
    picked = {it["sha256"] for it in queue.items}
    assert {far[3], far[5]} <= picked and len(picked & (dups | {far[4]})) == 1  # direction 4 once
    for it in queue.items:  # self-contained: the pictures were copied in
        assert queue.image_path(it).read_bytes().startswith(b"\x89PNG")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".queue")]  # no temp folder left


def test_queue_refuses_an_existing_folder_without_force_and_no_pictures(tmp_path, capsys):
    write_records(tmp_path / "rec", [{"top": [["cat", 0.6], ["dog", 0.4]], "emb": direction(1)}])
    (tmp_path / "queue").mkdir()
    (tmp_path / "queue" / "keep.txt").write_text("x")
    with pytest.raises(ImagerecError, match="--force"):
        build_queue(tmp_path / "rec", tmp_path / "queue")
    code, out, _ = run_cli(
        capsys, "review", str(tmp_path / "rec"), "--out", str(tmp_path / "queue"), "--force"
    )
    assert code == 0 and "queued 1 of 1" in out and not (tmp_path / "queue" / "keep.txt").exists()
    empty = tmp_path / "empty"
    (empty / "records").mkdir(parents=True)
    code, _, err = run_cli(capsys, "review", str(empty), "--out", str(tmp_path / "q2"))
    assert code == 2 and "no recorded pictures" in err


def test_label_store_writes_class_folders_moves_on_relabel_and_refuses_unknown_classes(tmp_path):
    picture = tmp_path / "p.png"
    picture.write_bytes(b"png-bytes")
    store = LabelStore(tmp_path / "ds", CLASSES)
    store.decide("abc", picture, "cat")
    assert (tmp_path / "ds" / "cat" / "abc.png").read_bytes() == b"png-bytes"
    store.decide("abc", picture, "dog")  # relabel: moved, never in two classes
    assert (
        not (tmp_path / "ds" / "cat" / "abc.png").exists() and (tmp_path / "ds" / "dog" / "abc.png").exists()
    )
    store.decide("abc", picture, "none")  # a dot folder: imagerec train never reads it as a class
    assert (tmp_path / "ds" / ".none" / "abc.png").exists() and not (
        tmp_path / "ds" / "dog" / "abc.png"
    ).exists()
    store.decide("abc", picture, "skip")
    assert (tmp_path / "ds" / ".none" / "abc.png").exists()
    store.decide("abc", picture, "undo")
    assert not list((tmp_path / "ds").glob("*/abc.png")) and not list((tmp_path / "ds").glob(".none/*"))
    with pytest.raises(LabelRefused, match="expected one of cat, dog, fox"):
        store.decide("abc", picture, "wolf")
    assert store.decisions() == {}


def test_two_reviewers_at_once_last_write_wins_and_nothing_is_half_written(tmp_path):
    picture = tmp_path / "p.png"
    picture.write_bytes(b"x" * 200_000)
    stores = [LabelStore(tmp_path / "ds", CLASSES) for _ in range(2)]
    done = []

    def reviewer(n: int) -> None:
        for i in range(40):
            label = CLASSES[(i + n) % 3]
            stores[n].decide("same", picture, label, reviewer=str(n))
            done.append(label)

    threads = [threading.Thread(target=reviewer, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    copies = [p for p in (tmp_path / "ds").rglob("*") if p.is_file() and ".review" not in p.parts]
    assert len(copies) == 1 and copies[0].read_bytes() == picture.read_bytes()  # one whole copy
    last = stores[0].decisions()["same"]
    assert copies[0].parent.name == last  # the last logged decision is the one on disk
    assert len((tmp_path / "ds" / ".review" / "log.jsonl").read_text().splitlines()) == 80


def test_multilabel_store_rewrites_the_csv(tmp_path):
    picture = tmp_path / "p.jpg"
    picture.write_bytes(b"jpeg")
    store = LabelStore(tmp_path / "ml", CLASSES, multilabel=True)
    store.decide("a1", picture, ["cat", "fox"])
    store.decide("b2", picture, "none")  # an empty label set
    store.decide("a1", picture, ["dog"])
    rows = {r["path"]: r["labels"] for r in store.csv_rows()}
    assert rows == {"images/a1.jpg": "dog", "images/b2.jpg": ""}
    with pytest.raises(LabelRefused, match="cat, dog, fox"):
        store.decide("a1", picture, ["cat", "wolf"])


def test_a_crowded_corner_of_embedding_space_gets_its_share_of_the_queue():
    """The shift a model is confidently wrong about packs into a corner of its embedding space; farthest-point
    picking would queue one or two of those and fill the rest with the spread-out pictures. The strata share the
    queue by summed score: the crowd gets about its share, and still no near duplicates."""
    from imagerec.monitoring.review import Candidate, select

    rng = np.random.default_rng(0)
    crowd = [direction(0, dims=16, jitter=0.02, seed=i) for i in range(120)]  # one corner, 120 pictures
    spread = [rng.normal(size=16) for _ in range(40)]  # 40 pictures all over the space
    cands = [Candidate({}, Path("x"), 0.5, (e / np.linalg.norm(e)).astype(np.float32), 0.6) for e in crowd]
    cands += [Candidate({}, Path("x"), 0.5, (e / np.linalg.norm(e)).astype(np.float32), 0.8) for e in spread]
    picks = select(cands, 40, near_duplicate=0.0005, strata=8)
    from_crowd = sum(i < 120 for i in picks)
    assert len(picks) == 40 and len(set(picks)) == 40
    # summed scores: crowd 72, spread 32 -> about 28 of 40; farthest-point would take 1 or 2
    assert 20 <= from_crowd <= 34, from_crowd
    assert [cands[i].score for i in picks] == sorted((cands[i].score for i in picks), reverse=True)
