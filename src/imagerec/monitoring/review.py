"""Pick the recorded pictures whose labels would help the model most (``imagerec review DIR --out QUEUE``).

Why not label at random: most live traffic is answered right already, so a random picture mostly confirms what the
model knows. The pictures worth a reviewer's minute are the ones the model is unsure of or has never seen the like of,
and a queue of 200 near-identical unsure pictures teaches as much as one of them. The rule, in three steps:

1. **Candidates**: the records with a stored picture (``--record-images review``), one per sha256 (the newest).
2. **Score** ``s`` in (0, 1]: the mean of two rank-normalised figures, *uncertainty* (single-label: ``1 - margin``
   between the two best classes; multi-label: how close the nearest class is to its threshold) and the *OOD score*
   (distance to the training data, :mod:`imagerec.openworld`). Ranks, not raw values, so neither scale dominates.
3. **Diverse picks, in proportion**: the candidates' embeddings are split into ``strata`` (20) k-means clusters
   and each cluster gets a share of the queue in proportion to its summed ``s`` (its size, weighed by how unsure
   and unusual its pictures are); within a cluster the highest ``s`` go
   first, and a candidate within ``near_duplicate`` (cosine distance) of a pick is skipped as a near duplicate.
   Without embeddings the queue is the top ``s`` (sha256-deduplicated).

Why in proportion, measured (bench/review_loop.py, BENCHMARKS.md "Production: review"): a model confidently wrong
on a new kind of picture (inverted clothing: median confidence 0.84) packs those pictures into a small corner of
its embedding space while it spreads the pictures it knows; picking by score alone, or by farthest point, then
queues a few classes of the odd ones and many clean ones, and fine-tunes worse than a random draw of the recorded
pictures. Quotas per cluster follow where the traffic is, as a random draw does, and spend each quota on the
pictures the model is least sure of, one of each near-duplicate group.

The queue is a self-contained folder (it can be moved to a labelling machine)::

    QUEUE/queue.jsonl     one line per picture: id, image, sha256, guess, confidence, top_k, ood_score, why, ...
    QUEUE/meta.json       classes, task, size, source, the rule's settings
    QUEUE/images/<id>.<ext>

written beside ``QUEUE`` and renamed into place, so a reader never sees half a queue.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imagerec.errors import ImagerecError
from imagerec.monitoring.records import decode_embedding, read_records
from imagerec.settings import ReviewSettings
from imagerec.utils import atomic_write_json


@dataclass
class Candidate:
    """One recorded picture that may enter the queue."""

    row: dict[str, Any]
    path: Path
    uncertainty: float
    embedding: np.ndarray | None
    score: float = 0.0


def uncertainty_of(row: dict[str, Any], thresholds: dict[str, float] | None = None) -> float:
    """How unsure the answer of one record is, in [0, 1] (1 = a coin toss).

    Single-label: ``1 - (p1 - p2)`` of the two best classes in ``top_k`` (``1 - p1`` with one). Multi-label
    (``labels`` is a list): the largest ``1 - |p - t| / max(t, 1 - t)`` over the classes of ``top_k``, ``t`` the
    class's threshold (0.5 when unknown): a class right at its threshold is the most unsure call.
    """
    top = [float(s) for _, s in row.get("top_k") or []]
    if isinstance(row.get("labels"), list):
        names = [str(n) for n, _ in row.get("top_k") or []]
        best = 0.0
        for name, p in zip(names, top, strict=True):
            t = (thresholds or {}).get(name, 0.5)
            best = max(best, 1.0 - abs(p - t) / max(t, 1.0 - t))
        return best
    if not top:
        return 1.0 - float(row.get("confidence") or 0.0)
    return 1.0 - (top[0] - (top[1] if len(top) > 1 else 0.0))


def rank01(values: np.ndarray) -> np.ndarray:
    """Ranks scaled to (0, 1] (ties share their mean rank; NaN = the middle, 0.5)."""
    out = np.full(len(values), 0.5)
    ok = np.isfinite(values)
    if ok.any():
        order = values[ok].argsort(kind="stable")
        ranks = np.empty(ok.sum())
        ranks[order] = np.arange(1, ok.sum() + 1)
        for v in np.unique(values[ok]):  # ties: the mean rank
            same = values[ok] == v
            if same.sum() > 1:
                ranks[same] = ranks[same].mean()
        out[ok] = ranks / ok.sum()
    return out


def candidates(root: str | os.PathLike, thresholds: dict[str, float] | None = None) -> list[Candidate]:
    """The records of ``root`` with a stored picture on disk, one per sha256 (the newest), scored."""
    records = read_records(root)
    newest: dict[str, dict[str, Any]] = {}
    for row in records.rows:  # oldest first: a later record of the same picture replaces the earlier one
        path = records.image_path(row)
        if path is None or not path.is_file():
            continue
        newest[row.get("sha256") or str(path)] = row
    out = []
    for row in newest.values():
        path = records.image_path(row)
        emb = decode_embedding(row.get("embedding"))
        out.append(Candidate(row, path, uncertainty_of(row, thresholds), emb))  # type: ignore[arg-type]
    if out:
        ood = np.array([np.nan if c.row.get("ood_score") is None else float(c.row["ood_score"]) for c in out])
        unc = rank01(np.array([c.uncertainty for c in out]))
        score = (unc + rank01(ood)) / 2 if np.isfinite(ood).any() else unc
        for c, s in zip(out, score, strict=True):
            c.score = float(s)
    return out


def select(
    cands: list[Candidate],
    size: int,
    near_duplicate: float = ReviewSettings.near_duplicate,
    strata: int = ReviewSettings.strata,
) -> list[int]:
    """Indices of at most ``size`` candidates, highest score first: stratified by embedding cluster (see the
    module docstring)."""
    if not cands or size <= 0:
        return []
    score = np.array([c.score for c in cands], np.float64)
    dims = {c.embedding.shape[0] for c in cands if c.embedding is not None}
    if len(dims) != 1 or any(c.embedding is None for c in cands):
        return [int(i) for i in np.argsort(-score, kind="stable")[:size]]
    emb = np.stack([c.embedding for c in cands]).astype(np.float32)  # type: ignore[misc]
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    cluster = _clusters(emb, min(strata, size, len(cands)))
    sizes = np.bincount(cluster)
    weight = np.bincount(cluster, weights=score)  # a cluster's share: its pictures, weighed by their scores
    quota = _quotas(weight, sizes, min(size, len(cands)))
    picked: list[int] = []
    for j in np.flatnonzero(quota):
        members = np.flatnonzero(cluster == j)
        kept: list[int] = []
        for i in members[np.argsort(-score[members], kind="stable")]:
            if len(kept) == quota[j]:
                break
            if kept and (1.0 - emb[kept] @ emb[i]).min() <= near_duplicate:
                continue  # a near duplicate of a picture already queued
            kept.append(int(i))
        picked += kept
    taken = set(picked)
    for i in np.argsort(-score, kind="stable"):  # strata short of their quota (near duplicates): the best others
        if len(picked) >= size:
            break
        if int(i) not in taken and (1.0 - emb[picked] @ emb[i]).min() > near_duplicate:
            picked.append(int(i))
            taken.add(int(i))
    return sorted(picked, key=lambda i: -score[i])


def _clusters(emb: np.ndarray, k: int) -> np.ndarray:
    """k-means cluster of each (unit-length) embedding; deterministic (seeded), one pass of k-means++."""
    if k <= 1:
        return np.zeros(len(emb), np.int64)
    from sklearn.cluster import KMeans

    return KMeans(k, n_init=1, random_state=0).fit_predict(emb).astype(np.int64)


def _quotas(weight: np.ndarray, sizes: np.ndarray, total: int) -> np.ndarray:
    """``total`` picks shared among clusters in proportion to ``weight`` (largest remainders first), none over a
    cluster's ``sizes``."""
    share = weight / max(weight.sum(), 1e-12) * total
    quota = np.minimum(np.floor(share).astype(np.int64), sizes)
    while quota.sum() < total and (quota < sizes).any():
        open_ = quota < sizes
        j = int(np.argmax(np.where(open_, share - quota, -np.inf)))
        quota[j] += 1
    return quota


def build_queue(
    root: str | os.PathLike,
    out: str | os.PathLike,
    settings: ReviewSettings | None = None,
    classes: list[str] | None = None,
    thresholds: dict[str, float] | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Write the review queue of the records in ``root`` to ``out`` (see the module docstring); returns meta.

    Args:
        root: a ``--record DIR``.
        out: the queue folder to create (an existing queue is replaced only with ``force``).
        settings: ``size`` and ``near_duplicate``.
        classes: the class names a reviewer may pick (the run's); default: every class seen in the records.
        thresholds: a multi-label run's per-class thresholds (uncertainty = closeness to them).

    Raises:
        ImagerecError: no records, no stored pictures, or ``out`` exists without ``force``.
    """
    settings = (settings or ReviewSettings()).validate()
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise ImagerecError(f"{out} exists and is not empty; pick a new --out or pass --force to replace it")
    cands = candidates(root, thresholds)
    if not cands:
        raise ImagerecError(
            f"{root}: no recorded pictures to review; record with 'imagerec serve RUN --record DIR' "
            "(--record-images review keeps the pictures worth reviewing)"
        )
    picks = select(cands, settings.size, settings.near_duplicate, settings.strata)
    multilabel = any(isinstance(c.row.get("labels"), list) for c in cands)
    if classes is None:
        classes = sorted({str(n) for c in cands for n, _ in c.row.get("top_k") or []})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / "images").mkdir()
        lines = []
        for rank, i in enumerate(picks):
            lines.append(json.dumps(_entry(cands[i], rank, tmp)) + "\n")
        (tmp / "queue.jsonl").write_text("".join(lines), encoding="utf-8")
        meta = {
            "created": time.time(), "source": str(Path(root).resolve()), "size": len(picks),
            "candidates": len(cands), "classes": list(classes), "task": "multilabel" if multilabel else "multiclass",
            "rule": {"score": "mean rank of uncertainty and OOD score", "strata": settings.strata,
                     "diversity": "k-means strata in embedding space, picks in proportion to their sizes",
                     "near_duplicate": settings.near_duplicate},
        }  # fmt: skip
        atomic_write_json(tmp / "meta.json", meta)
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def _entry(cand: Candidate, rank: int, folder: Path) -> dict[str, Any]:
    row = cand.row
    sha = row.get("sha256") or f"{rank:06d}"
    item_id = sha[:16]
    image = f"images/{item_id}{cand.path.suffix.lower()}"
    shutil.copyfile(cand.path, folder / image)
    return {
        "id": item_id, "rank": rank, "image": image, "sha256": row.get("sha256"), "guess": row.get("label"),
        "labels": row.get("labels"), "confidence": row.get("confidence"), "top_k": row.get("top_k"),
        "ood_score": row.get("ood_score"), "uncertainty": round(cand.uncertainty, 4),
        "score": round(cand.score, 4), "why": row.get("why"), "time": row.get("time"),
        "model_version": row.get("model_version"),
    }  # fmt: skip


def _swap_in(tmp: Path, out: Path) -> None:
    """Rename the finished queue ``tmp`` to ``out`` (an old ``out`` is moved aside first, then removed)."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@dataclass
class Queue:
    """A queue folder read back (what the labelling server shows)."""

    root: Path
    items: list[dict[str, Any]]
    meta: dict[str, Any]

    def by_id(self, item_id: str) -> dict[str, Any] | None:
        return next((it for it in self.items if it["id"] == item_id), None)

    def image_path(self, item: dict[str, Any]) -> Path:
        return self.root / item["image"]


def read_queue(root: str | os.PathLike) -> Queue:
    """Read a queue written by :func:`build_queue`.

    Raises:
        ImagerecError: ``root`` holds no queue.jsonl (or a broken one).
    """
    root = Path(root)
    try:
        lines = (root / "queue.jsonl").read_text(encoding="utf-8").splitlines()
        items = [json.loads(line) for line in lines if line.strip()]
        meta = json.loads((root / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ImagerecError(
            f"{root}: not a review queue ({exc}); write one with 'imagerec review DIR --out QUEUE'"
        ) from None
    return Queue(root, items, meta)


__all__ = ["Candidate", "Queue", "build_queue", "candidates", "read_queue", "select", "uncertainty_of"]
