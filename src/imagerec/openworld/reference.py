"""The training set's embeddings in a few MB, and the out-of-distribution score against them.

The default score of an embedding ``z`` (L2-normalised, see :mod:`imagerec.openworld.features`) is its squared
Mahalanobis distance to the nearest class mean under the classes' shared covariance (Lee et al., "A simple unified
framework for detecting out-of-distribution samples and adversarial attacks", NeurIPS 2018): one ``(D, D)`` product
per image. ``knn`` is the cosine distance to the ``k``-th nearest of a class-stratified sample of training
embeddings (Sun et al., ICML 2022). ``bench/ood.py`` measures both against the max-softmax baseline; Mahalanobis
was chosen on the selection set (sklearn's 8x8 digits), and holds on the two reported sets (BENCHMARKS.md).
Multi-label rows count for every class they carry. Stored as ``RUN/reference.npz`` (plain arrays, loaded with
``allow_pickle=False``).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imagerec.errors import RunError

#: training embeddings kept for the kNN score (float16): 10,000 x 128 dims = 2.5 MB
SAMPLE = 10_000
#: training images a reference is fitted on (:func:`fit_rows`: larger train splits give a class-stratified sample).
#: Ten class means and a shrunk 512-dim covariance are as good from 20,000 images as from 54,000 (Fashion-MNIST:
#: see docs/open-world.md), and the embedding pass at the end of training takes 0.37x the time.
FIT_IMAGES = 20_000
#: the neighbour whose distance is the score (Sun et al. use k=50 of 50,000, i.e. 1 in 1,000 of the data)
K = 10
METHODS = ("knn", "mahalanobis")
#: a label set (multi-label runs) needs this many training images for its own mean
MIN_SET = 5


@dataclass
class Reference:
    """A sample of training embeddings, per-class means and a shared precision matrix."""

    sample: np.ndarray  # (M, D) float16, L2-normalised
    sample_labels: np.ndarray  # (M,) int32 (the first label of multi-label rows; -1 for none)
    means: np.ndarray  # (C, D) float32: per class (multi-label runs: per label set seen MIN_SET times)
    precision: np.ndarray  # (D, D) float32
    class_counts: np.ndarray  # (C,) int64: training images per class (of those it was fitted on)
    k: int = K
    method: str = "mahalanobis"

    def __post_init__(self) -> None:
        # precision = W W^T (Cholesky), so a squared distance is ||z W - mean W||^2: one (D, D) product per image
        self._whiten = np.linalg.cholesky(self.precision.astype(np.float64)).astype(np.float32)
        self._means_w = self.means @ self._whiten
        self._sample32: np.ndarray | None = None

    @classmethod
    def fit(
        cls, embeddings: np.ndarray, labels: np.ndarray, num_classes: int, sample: int = SAMPLE, seed: int = 0
    ) -> Reference:
        """The reference of training ``embeddings`` ``(N, D)`` with class indices ``labels`` ``(N,)``.

        ``labels`` may be a multi-hot ``(N, C)`` matrix (multi-label runs): the Gaussians are then those of the
        label *sets* (an image of a shirt and a bag is neither a typical shirt nor a typical bag); sets seen fewer
        than ``MIN_SET`` times are folded into the shared covariance only.
        """
        z = np.asarray(embeddings, np.float32)
        y = np.asarray(labels)
        if len(z) == 0:
            raise RunError("no training embeddings to build the out-of-distribution reference from")
        onehot = y.astype(np.float32) if y.ndim == 2 else np.eye(num_classes, dtype=np.float32)[y]
        counts = onehot.sum(0)
        group = _groups(y) if y.ndim == 2 else y.astype(np.int64)
        members = np.eye(int(group.max()) + 1, dtype=np.float32)[group]  # (N, G): one Gaussian per class / set
        sizes = members.sum(0)
        means = (members.T @ z) / np.maximum(sizes, 1)[:, None]
        centred = z - members @ means
        if y.ndim == 2 and (sizes >= MIN_SET).any():
            means = means[sizes >= MIN_SET]
        cov = _shrunk_covariance(centred)
        first = np.where(onehot.any(1), onehot.argmax(1), -1).astype(np.int32)
        keep = _stratified_sample(first, sample, seed)
        return cls(
            sample=z[keep].astype(np.float16),
            sample_labels=first[keep],
            means=means.astype(np.float32),
            precision=np.linalg.inv(cov).astype(np.float32),
            class_counts=counts.astype(np.int64),
            k=min(K, len(keep)),
        )

    @classmethod
    def of_images(
        cls, fn, images: np.ndarray, labels: np.ndarray, num_classes: int, batch_size: int
    ) -> Reference | None:
        """The reference of a train split: the embeddings the runtime callable ``fn`` gives its :func:`fit_rows`
        (at most ``FIT_IMAGES``, gathered a batch at a time). None when ``fn`` gives no embedding or the split is
        empty."""
        from imagerec.runtime import predict_in_batches

        rows = fit_rows(labels)
        _, emb = predict_in_batches(fn, images, batch_size, embedding=True, rows=rows)
        if emb is None or not len(rows):
            return None
        return cls.fit(emb, np.asarray(labels)[rows], num_classes)

    # scores ---------------------------------------------------------------------------------------------------
    def score(self, embeddings: np.ndarray, method: str | None = None) -> np.ndarray:
        """Out-of-distribution scores ``(N,)`` of L2-normalised ``embeddings`` ``(N, D)``: higher = further.

        The products run on one BLAS thread: beside a model that already uses every core (a server's batch, a
        video's frames), a multi-threaded OpenBLAS waits on busy cores, 0.6 ms became 33 ms at batch 32 here.
        """
        z = np.asarray(embeddings, np.float32)
        if z.ndim != 2 or z.shape[1] != self.sample.shape[1]:
            raise RunError(f"embeddings of shape {z.shape} do not match the reference's {self.sample.shape[1]} dims")
        method = method or self.method
        if method not in METHODS:
            raise RunError(f"unknown out-of-distribution method {method!r}; choose one of {', '.join(METHODS)}")
        score = self.knn if method == "knn" else self.mahalanobis
        if len(z) < 4:  # a vector-matrix product: one thread already, and the limit's own cost (~30 us) is saved
            return score(z)
        with _one_blas_thread():
            return score(z)

    def knn(self, z: np.ndarray) -> np.ndarray:
        """Cosine distance to the ``k``-th nearest training embedding of the sample."""
        if len(z) == 0:
            return np.zeros(0, np.float32)
        if self._sample32 is None:
            self._sample32 = self.sample.astype(np.float32)
        sims = z @ self._sample32.T  # (N, M)
        kth = np.partition(sims, -self.k, axis=1)[:, -self.k]
        return (1.0 - kth).astype(np.float32)

    def mahalanobis(self, z: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance to the nearest class mean (shared covariance; Lee et al., 2018)."""
        zw = z @ self._whiten  # (N, D)
        dist = (zw**2).sum(1)[:, None] - 2.0 * zw @ self._means_w.T + (self._means_w**2).sum(1)[None, :]
        return np.maximum(dist.min(axis=1), 0.0).astype(np.float32)

    # storage --------------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        from imagerec.utils import atomic_write_bytes

        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            sample=self.sample,
            sample_labels=self.sample_labels,
            means=self.means,
            precision=self.precision,
            class_counts=self.class_counts,
            k=np.int64(self.k),
            method=np.array(self.method),
        )
        atomic_write_bytes(path, buf.getvalue())
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Reference:
        """Read ``reference.npz`` (plain arrays only: ``allow_pickle=False``)."""
        try:
            with np.load(path, allow_pickle=False) as f:
                return cls(
                    sample=f["sample"],
                    sample_labels=f["sample_labels"],
                    means=f["means"],
                    precision=f["precision"],
                    class_counts=f["class_counts"],
                    k=int(f["k"]),
                    method=str(f["method"]),
                )
        except (OSError, KeyError, ValueError) as exc:
            raise RunError(f"{path}: not a readable embedding reference ({exc}); rebuild it with 'imagerec calibrate'") from None


_CONTROLLER = None


def _one_blas_thread():
    """A context limiting BLAS (numpy's matrix products) to one thread (``threadpoolctl``, scikit-learn's)."""
    global _CONTROLLER
    from threadpoolctl import ThreadpoolController

    if _CONTROLLER is None:
        _CONTROLLER = ThreadpoolController()  # inspects the loaded libraries once (~ms), not per call
    return _CONTROLLER.limit(limits=1, user_api="blas")


def _shrunk_covariance(centred: np.ndarray) -> np.ndarray:
    """The covariance of ``centred`` rows, shrunk towards a scaled identity by the Ledoit-Wolf amount
    (scikit-learn): little for 54,000 images, much for a few dozen in 512 dimensions, whose plain estimate would
    make every direction they do not span look infinitely far."""
    from sklearn.covariance import ledoit_wolf_shrinkage

    cov = centred.T @ centred / len(centred)
    mu = float(np.trace(cov)) / len(cov)
    alpha = max(float(ledoit_wolf_shrinkage(centred, assume_centered=True)), 1e-3)
    return ((1 - alpha) * cov + alpha * mu * np.eye(len(cov)) + 1e-8 * np.eye(len(cov))).astype(np.float32)


def _groups(multi_hot: np.ndarray) -> np.ndarray:
    """The index of each row's label set among the distinct sets ``(N,)``."""
    _, inverse = np.unique((np.asarray(multi_hot) > 0.5).astype(np.uint8), axis=0, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64)


def fit_rows(labels: np.ndarray, size: int | None = None, seed: int = 0) -> np.ndarray:
    """The rows of a train split's ``labels`` (class indices ``(N,)`` or multi-hot ``(N, C)``) to embed and fit
    the reference on: all of them up to ``size`` (default ``FIT_IMAGES``), else a sample with each class (a
    multi-label run: each label set, as :meth:`Reference.fit` groups them) in proportion. Sorted indices."""
    y = np.asarray(labels)
    return _stratified_sample(_groups(y) if y.ndim == 2 else y, FIT_IMAGES if size is None else size, seed)


def _stratified_sample(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Indices of up to ``size`` rows, each class (and the unlabelled, -1) in proportion, sorted."""
    if len(labels) <= size:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    keep = []
    for value in np.unique(labels):
        rows = np.nonzero(labels == value)[0]
        take = max(1, round(size * len(rows) / len(labels)))
        keep.append(rng.choice(rows, size=min(take, len(rows)), replace=False))
    return np.sort(np.concatenate(keep))


__all__ = ["FIT_IMAGES", "K", "METHODS", "SAMPLE", "Reference", "fit_rows"]
