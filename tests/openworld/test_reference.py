"""The embedding reference and its out-of-distribution scores (numpy only, against brute-force formulas)."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from imagerec.errors import RunError
from imagerec.openworld import ood_threshold
from imagerec.openworld.reference import Reference, fit_rows


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def clusters():
    """Three tight clusters of unit vectors (the 'training embeddings') and their labels."""
    rng = np.random.default_rng(0)
    centres = _unit(rng.normal(size=(3, 16)))
    y = rng.integers(0, 3, 600)
    z = _unit(centres[y] + 0.05 * rng.normal(size=(600, 16)))
    return z, y, centres


def test_mahalanobis_equals_the_textbook_formula(clusters):
    z, y, _ = clusters
    ref = Reference.fit(z, y, 3)
    means = np.stack([z[y == c].mean(0) for c in range(3)])
    centred = z - means[y]
    from sklearn.covariance import ledoit_wolf

    cov, _ = ledoit_wolf(centred, assume_centered=True)  # the shared covariance, shrunk the Ledoit-Wolf way
    precision = np.linalg.inv(cov)
    queries = z[:5]
    d = queries[:, None, :] - means[None]
    expected = np.einsum("ncd,de,nce->nc", d, precision, d).min(1)
    np.testing.assert_allclose(ref.score(queries), expected, rtol=1e-3, atol=1e-2)
    assert ref.method == "mahalanobis"


def test_knn_is_the_distance_to_the_kth_neighbour(clusters):
    z, y, _ = clusters
    ref = Reference.fit(z, y, 3, sample=200)
    assert len(ref.sample) == pytest.approx(200, abs=3)  # class-stratified rounding
    queries = _unit(np.random.default_rng(1).normal(size=(4, 16)))
    sims = np.sort(queries @ ref.sample.astype(np.float32).T, axis=1)[:, ::-1]
    np.testing.assert_allclose(ref.score(queries, "knn"), 1 - sims[:, ref.k - 1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["mahalanobis", "knn"])
def test_far_embeddings_score_higher_than_training_like_ones(clusters, method):
    z, y, centres = clusters
    ref = Reference.fit(z, y, 3)
    rng = np.random.default_rng(2)
    near = _unit(centres[rng.integers(0, 3, 50)] + 0.05 * rng.normal(size=(50, 16)))
    far = _unit(rng.normal(size=(50, 16)))
    threshold = ood_threshold(ref.score(near, method), 0.95)
    assert np.mean(ref.score(near, method) <= threshold) >= 0.95
    assert np.mean(ref.score(far, method) > threshold) > 0.9


def test_multilabel_rows_count_for_every_class(clusters):
    z, y, _ = clusters
    multi = np.eye(3)[y]
    multi[np.arange(10), (y[:10] + 1) % 3] = 1  # ten images carry a second label
    ref = Reference.fit(z, multi, 3)
    assert (
        ref.class_counts.tolist()
        == (np.bincount(y, minlength=3) + np.bincount((y[:10] + 1) % 3, minlength=3)).tolist()
    )
    assert np.isfinite(ref.score(z[:3])).all()


def test_save_and_load_round_trip_without_pickle(clusters, tmp_path):
    z, y, _ = clusters
    ref = Reference.fit(z, y, 3)
    path = ref.save(tmp_path / "reference.npz")
    again = Reference.load(path)
    np.testing.assert_array_equal(again.sample, ref.sample)
    np.testing.assert_allclose(again.score(z[:8]), ref.score(z[:8]), rtol=1e-6)
    assert (again.method, again.k) == (ref.method, ref.k)


def test_a_pickled_or_broken_reference_is_refused(clusters, tmp_path):
    z, y, _ = clusters
    path = Reference.fit(z, y, 3).save(tmp_path / "reference.npz")
    buf = io.BytesIO()
    np.save(buf, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    with zipfile.ZipFile(path, "a") as zf:  # replace the sample with an object array (needs pickle to load)
        zf.writestr("sample.npy", buf.getvalue())
    with pytest.raises(RunError, match="not a readable embedding reference"):
        Reference.load(path)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(RunError, match="not a readable embedding reference"):
        Reference.load(tmp_path / "junk.npz")


def test_scores_refuse_embeddings_of_another_size(clusters):
    z, y, _ = clusters
    with pytest.raises(RunError, match="do not match"):
        Reference.fit(z, y, 3).score(np.zeros((2, 8), np.float32))


def test_fit_rows_keep_every_class_in_proportion_up_to_the_cap():
    y = np.repeat([0, 1, 2], [600, 300, 100])
    rows = fit_rows(y, size=100)
    assert len(rows) == 100 and np.all(np.diff(rows) > 0)
    assert np.bincount(y[rows]).tolist() == [60, 30, 10]
    assert np.array_equal(fit_rows(y, size=100), rows)  # the same sample every time
    assert np.array_equal(fit_rows(y, size=1000), np.arange(1000))  # small splits: every row
    multi_hot = np.zeros((1000, 3), bool)
    multi_hot[np.arange(1000), y] = True
    multi_hot[:5] = False  # rows with no label are a stratum of their own
    kept = fit_rows(multi_hot, size=100)
    assert (kept < 5).sum() == 1 and np.bincount(y[kept[kept >= 5]]).tolist() == [60, 30, 10]
    # multi-label: each label *set* kept, as Reference.fit groups them ({0} and a rare {0, 1} share a first label)
    sets = np.zeros((1000, 2), bool)
    sets[:, 0], sets[995:, 1] = True, True
    assert sets[fit_rows(sets, size=20)][:, 1].sum() == 1
