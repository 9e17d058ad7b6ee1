"""The graph and spectral steps of Alg. 2 (CP-CNN §3.1), for `HyperClassClustering` in `clustering.py`.

Indicator vectors (Eq. 2) and the class similarity, the checks on calibration probabilities, the kNN graph with the
smallest connected k, the unnormalized Laplacian's generalized eigenproblem and the eigengap. scikit-learn has no
unnormalized Laplacian and no eigengap, hence these few functions over SciPy (see `clustering.py` for the choices).
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.linalg import eigh
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from dynacnn.errors import ConfigError, DataError

LOCAL_SCALE_NEIGHBOUR = 7
ROW_SUM_TOLERANCE = 1e-3


def default_max_clusters(n_classes: int) -> int:
    """Eigengap search bound min(K - 1, max(2, ceil(2 sqrt K))).

    CP-CNN splits K = K1 x K2 with both factors much smaller than K; the balanced split is
    K1 = sqrt(K), and twice that leaves room for unequal clusters. Further out the routing stage is no
    longer small and the eigengap is dominated by noise. K - 1 because the gap after n needs the
    (n + 1)-th eigenvalue.
    """
    return min(n_classes - 1, max(2, math.ceil(2 * math.sqrt(n_classes))))


def indicator_vectors(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Eq. 2 of CP-CNN: row i is the mean probability vector over the calibration images of class i."""
    n_images, n_classes = probs.shape
    onehot = csr_matrix((np.ones(n_images), (labels, np.arange(n_images))), shape=(n_classes, n_images))
    return np.asarray(onehot @ probs) / np.bincount(labels, minlength=n_classes)[:, None]


def confusion_similarity(indicators: np.ndarray) -> np.ndarray:
    """Default class similarity from Eq. 2 vectors: drop the diagonal, renormalise rows, symmetrise."""
    q = indicators.copy()
    np.fill_diagonal(q, 0.0)
    sums = q.sum(axis=1, keepdims=True)
    q = np.divide(q, sums, out=np.zeros_like(q), where=sums > 0)
    return (q + q.T) / 2


def self_tuning_kernel(distances: np.ndarray) -> np.ndarray:
    """Gaussian exp(-d_ij^2 / (s_i s_j)), s_i = distance to the 7th nearest point (Zelnik-Manor & Perona)."""
    nth = min(LOCAL_SCALE_NEIGHBOUR, len(distances) - 1)
    scale = np.maximum(np.partition(distances, nth, axis=1)[:, nth], np.finfo(float).eps)
    return np.exp(-(distances**2) / np.outer(scale, scale))


def check_calibration(probs: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validate (N, K) softmax outputs and (N,) labels; renormalise rows that do not sum to 1."""
    try:
        probs = np.asarray(probs, dtype=float)
    except (TypeError, ValueError):
        raise DataError("probs must be a numeric (N, K) array of softmax outputs") from None
    if probs.ndim != 2 or probs.shape[0] == 0:
        raise DataError(f"probs must be a non-empty (N, K) array of softmax outputs, got shape {probs.shape}")
    n_images, n_classes = probs.shape
    check_n_classes(n_classes, "probs has")
    bad = np.flatnonzero(~np.isfinite(probs).all(axis=1))
    if bad.size:
        raise DataError(f"probs has NaN or inf in {bad.size} rows (first: row {bad[0]}); fix or drop those images")
    bad = np.flatnonzero((probs < 0).any(axis=1))
    if bad.size:
        raise DataError(
            f"probs has negative entries in {bad.size} rows (first: row {bad[0]}); "
            "pass softmax probabilities, not logits"
        )
    sums = probs.sum(axis=1)
    bad = np.flatnonzero(sums <= 0)
    if bad.size:
        raise DataError(f"probs row {bad[0]} sums to 0 ({bad.size} such rows); every image needs a probability vector")
    off = np.abs(sums - 1) > ROW_SUM_TOLERANCE
    if off.any():
        warnings.warn(
            f"{off.sum()} rows of probs do not sum to 1 (first: row {np.flatnonzero(off)[0]}, sum "
            f"{sums[off][0]:.4g}); renormalising them",
            UserWarning,
            stacklevel=3,
        )
    probs = probs / sums[:, None]
    labels = np.asarray(labels)
    if labels.shape != (n_images,):
        raise DataError(f"labels must have shape ({n_images},) to match probs, got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"labels must be integer class ids, got dtype {labels.dtype}")
    bad = np.flatnonzero((labels < 0) | (labels >= n_classes))
    if bad.size:
        raise DataError(
            f"labels[{bad[0]}] = {labels[bad[0]]} is outside [0, {n_classes - 1}] (K = {n_classes} columns of probs)"
        )
    empty = np.flatnonzero(np.bincount(labels, minlength=n_classes) == 0)
    if empty.size:
        raise DataError(
            f"class {empty[0]} has no calibration images ({empty.size} empty classes); "
            "add images of it or drop its column from probs"
        )
    return probs, labels.astype(np.int64)


def check_similarity(similarity: ArrayLike) -> np.ndarray:
    """Validate a precomputed (K, K) class similarity: finite, non-negative, symmetric; diagonal ignored."""
    try:
        s = np.array(similarity, dtype=float)
    except (TypeError, ValueError):
        raise DataError("similarity must be a numeric (K, K) matrix") from None
    if s.ndim != 2 or s.shape[0] != s.shape[1]:
        raise DataError(f"similarity must be a square (K, K) matrix, got shape {s.shape}")
    check_n_classes(len(s), "similarity has")
    if not np.isfinite(s).all():
        raise DataError("similarity has NaN or inf entries; pass a finite matrix")
    if (s < 0).any():
        raise DataError("similarity has negative entries; pass non-negative affinities (e.g. exp(-distance))")
    if not np.allclose(s, s.T, rtol=1e-6, atol=1e-12):
        i, j = np.unravel_index(np.argmax(np.abs(s - s.T)), s.shape)
        raise DataError(
            f"similarity is not symmetric (S[{i},{j}] = {s[i, j]:.4g}, S[{j},{i}] = {s[j, i]:.4g}); pass (S + S.T) / 2"
        )
    np.fill_diagonal(s, 0.0)
    return s


def check_n_classes(n_classes: int, what: str) -> None:
    """Refuse fewer than 3 classes: 2 classes leave nothing to group."""
    if n_classes < 3:
        raise DataError(f"{what} {n_classes} classes; hyper-class clustering needs K >= 3")


def check_int(name: str, value: Any, low: int, high: int, none_means: str | None = None) -> None:
    """Raise ConfigError unless `value` is an int in [low, high] (or None where allowed)."""
    if value is None and none_means is not None:
        return
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or not low <= value <= high:
        hint = f" (or None for {none_means})" if none_means else ""
        raise ConfigError(f"{name}={value!r} must be an integer in [{low}, {high}]{hint}")


def neighbour_scores(
    similarity: np.ndarray | None, distances: np.ndarray | None, binary: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Neighbour ranking score (higher = nearer, -inf = never an edge) and edge weights, from one of the two."""
    if distances is None:
        score = np.where(similarity > 0, similarity, -np.inf)
        weight = (similarity > 0).astype(float) if binary else similarity
    else:
        score = -distances
        weight = np.ones_like(distances) if binary else np.maximum(self_tuning_kernel(distances), np.finfo(float).eps)
    np.fill_diagonal(score, -np.inf)
    return score, weight


def knn_affinity(score: np.ndarray, weight: np.ndarray, n_neighbors: int | None) -> tuple[np.ndarray, csr_matrix, int]:
    """Alg. 2 step 1: symmetrised kNN affinity, its directed kNN graph, and k (smallest connected if None)."""
    n_classes = len(score)
    order = np.argsort(-score, axis=1, kind="stable")[:, : n_classes - 1]
    valid = np.take_along_axis(score, order, axis=1) > -np.inf
    k = smallest_connected_k(order, valid) if n_neighbors is None else n_neighbors
    directed = _knn_graph(order, valid, k)
    count = _components(directed)[0]
    if count > 1:
        raise ConfigError(f"n_neighbors={k} leaves the class kNN graph in {count} parts; raise it or use None")
    return np.where((directed + directed.T).toarray() > 0, weight, 0.0), directed, k


def _knn_graph(order: np.ndarray, valid: np.ndarray, k: int) -> csr_matrix:
    """Directed kNN graph without self-loops: an edge from each class to its k nearest (Alg. 2 step 1)."""
    n_classes = len(order)
    keep = valid[:, :k].ravel()
    rows = np.repeat(np.arange(n_classes), k)[keep]
    return csr_matrix((np.ones(keep.sum()), (rows, order[:, :k].ravel()[keep])), shape=(n_classes, n_classes))


def _components(graph: csr_matrix) -> tuple[int, np.ndarray]:
    """Connected components of the symmetrised graph (weak components of the directed one)."""
    return connected_components(graph, directed=True, connection="weak")


def smallest_connected_k(order: np.ndarray, valid: np.ndarray) -> int:
    """Smallest k whose symmetrised kNN graph is connected; binary search, as edges only grow with k."""
    n_classes = len(order)
    count, component = _components(_knn_graph(order, valid, n_classes - 1))
    if count > 1:
        small = np.argmin(np.bincount(component))
        members = np.flatnonzero(component == small)
        raise DataError(
            f"no k makes the class graph connected: {count} parts even with all {n_classes - 1} "
            f"neighbours (classes {members[:5].tolist()} have no positive similarity to the rest); "
            "give every group of classes some similarity to the others"
        )
    low, high = 1, n_classes - 1
    while low < high:
        mid = (low + high) // 2
        if _components(_knn_graph(order, valid, mid))[0] == 1:
            high = mid
        else:
            low = mid + 1
    return low


def generalized_laplacian_eigh(affinity: np.ndarray, n_eigen: int) -> tuple[np.ndarray, np.ndarray]:
    """Alg. 2 steps 2-5: the n_eigen smallest solutions of L x = lambda D x, L = D - A, ascending."""
    degree = np.diag(affinity.sum(axis=1))
    return eigh(degree - affinity, degree, subset_by_index=[0, n_eigen - 1])


def eigengap(eigenvalues: np.ndarray, max_clusters: int) -> int:
    """Eigengap heuristic (von Luxburg 2007): n in [2, max_clusters] maximising lambda_{n+1} - lambda_n."""
    return 2 + int(np.argmax(np.diff(eigenvalues[1 : max_clusters + 1])))


def row_normalise(vectors: np.ndarray) -> np.ndarray:
    """Alg. 2 step 6: scale every row to unit length; all-zero rows stay zero."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def canonical_labels(labels: np.ndarray) -> np.ndarray:
    """Renumber cluster ids 0..n-1 in the order of each cluster's smallest class index."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    return np.argsort(np.argsort(first))[inverse]
