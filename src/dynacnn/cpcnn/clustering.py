"""Alg. 2 of CP-CNN: hyper-class discovery by spectral clustering of the classes.

Pipeline: indicator vectors (Eq. 2) -> class similarity -> kNN graph with the smallest connected k ->
unnormalized Laplacian L = D - A -> generalized eigenproblem L x = lambda D x -> eigengap -> row-normalised
eigenvectors -> k-means -> hyper-class ids renumbered by their smallest class index.

Default similarity, ``similarity="confusion"``: the paper clusters the raw indicator vectors under
Euclidean distance. Their diagonal p_ii dominates, so every row is close to the least confident class
(whose p_ii is smallest): that class becomes nearly every class's nearest neighbour ("hubness"), a star
graph is connected at k = 1-2, the eigengap sees a flat spectrum and k-means splits an arbitrary basis
of a degenerate eigenspace: degenerate clusters (e.g. 99 + 1) that change with seed and platform. The default instead drops the diagonal, renormalises each row to
sum 1 (where a class's *misplaced* probability goes, whatever its confidence) and symmetrises,
S = (Q + Q^T) / 2: a soft, symmetric confusion matrix, as in confusion-graph taxonomies
(Griffin & Perona, CVPR 2008). The paper's literal variant is ``similarity="indicator",
edge_weights="binary"``.

Edge weights, ``edge_weights="kernel"``: well-separated groups need a large k before the kNN graph is
connected, and with binary weights the bridging edges weigh as much as the within-group ones, so small
groups get absorbed. Kernel weights keep bridges weak: an edge carries the similarity itself for
"confusion" and precomputed matrices (they are affinities already) and the self-tuning Gaussian
exp(-d_ij^2 / (s_i s_j)) of the Euclidean distance for "indicator", s_i being the distance to the 7th
nearest class (Zelnik-Manor & Perona, NIPS 2004).

Probabilities: NaN, inf and negative entries are refused (DataError); rows that do not sum to 1
(beyond 1e-3) are renormalised with a UserWarning, so temperature-scaled or float16 outputs still work.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.linalg import eigh
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial.distance import cdist
from sklearn.base import BaseEstimator, clone
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from threadpoolctl import threadpool_limits

from dynacnn.errors import ConfigError, DataError

SIMILARITIES = ("confusion", "indicator")
EDGE_WEIGHTS = ("kernel", "binary")
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
    _check_n_classes(n_classes, "probs has")
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
    _check_n_classes(len(s), "similarity has")
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


def _check_n_classes(n_classes: int, what: str) -> None:
    """Refuse fewer than 3 classes: 2 classes leave nothing to group."""
    if n_classes < 3:
        raise DataError(f"{what} {n_classes} classes; hyper-class clustering needs K >= 3")


def _check_int(name: str, value: Any, low: int, high: int, none_means: str | None = None) -> None:
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


class HyperClassClustering(BaseEstimator):
    """Alg. 2 of CP-CNN: group K classes into hyper-classes by spectral clustering of a class kNN graph.

    n_clusters: number of hyper-classes, or None for the eigengap choice in [2, max_clusters].
    max_clusters: eigengap search bound, or None for `default_max_clusters(K)`.
    n_neighbors: k of the kNN graph, or None for the smallest k giving a connected graph (the paper's rule).
    similarity: "confusion" (default, see the module docstring) or "indicator" (Euclidean on Eq. 2 vectors).
    edge_weights: "kernel" (default) or "binary" (the paper's literal kNN graph).
    n_init, random_state: k-means restarts and seed; a fixed seed gives identical results.

    Fitted attributes: labels_ (K,) hyper-class ids 0..n_clusters_-1, numbered by smallest member class;
    n_clusters_ (below the request only if k-means finds fewer distinct rows); n_neighbors_;
    max_clusters_; eigenvalues_ (smallest of L x = lambda D x, ascending); embedding_ (K, n) row-normalised
    eigenvectors given to k-means (Alg. 2 steps 6-7); indicators_ (K, K) Eq. 2 vectors (None after
    fit_similarity); affinity_ (K, K) symmetric kNN affinity actually clustered; similarity_
    ("confusion", "indicator" or "precomputed"); cluster_sizes_; degree_stats_ (in-degree min / mean / max
    of the directed kNN graph and its hub_class: hubness shows as a max close to K); classes_ (original
    class id of each class).

    Fit with `fit(probs, labels)` on calibration softmax outputs, or `fit_similarity(S)` on a precomputed
    (K, K) similarity (then `similarity` is not used). All indices on the fitted object are this
    estimator's class indices 0..K-1; `classes_` maps them to original class ids (they differ after
    `recluster`). Arrays passed to `score_against`, `to_dict` and the plots are aligned with `classes_`.
    """

    def __init__(
        self,
        n_clusters: int | None = None,
        max_clusters: int | None = None,
        n_neighbors: int | None = None,
        random_state: int | None = 0,
        similarity: str = "confusion",
        edge_weights: str = "kernel",
        n_init: int = 10,
    ) -> None:
        self.n_clusters = n_clusters
        self.max_clusters = max_clusters
        self.n_neighbors = n_neighbors
        self.random_state = random_state
        self.similarity = similarity
        self.edge_weights = edge_weights
        self.n_init = n_init

    def fit(self, probs: ArrayLike, labels: ArrayLike) -> HyperClassClustering:
        """Alg. 2 on the Eq. 2 indicator vectors of calibration softmax outputs (N, K) and labels (N,)."""
        self._check_options()
        probs, labels = check_calibration(probs, labels)
        self.indicators_ = indicator_vectors(probs, labels)
        if self.similarity == "confusion":
            return self._fit_graph(confusion_similarity(self.indicators_), None, "confusion")
        return self._fit_graph(None, cdist(self.indicators_, self.indicators_), "indicator")

    def fit_similarity(self, similarity: ArrayLike) -> HyperClassClustering:
        """Alg. 2 steps 1-8 on a precomputed symmetric non-negative (K, K) class similarity."""
        self._check_options()
        self.indicators_ = None
        return self._fit_graph(check_similarity(similarity), None, "precomputed")

    def _check_options(self) -> None:
        """Refuse unknown similarity / edge_weights names and a bad n_init before touching the data."""
        if self.similarity not in SIMILARITIES:
            raise ConfigError(f"similarity={self.similarity!r} must be one of {SIMILARITIES}")
        if self.edge_weights not in EDGE_WEIGHTS:
            raise ConfigError(f"edge_weights={self.edge_weights!r} must be one of {EDGE_WEIGHTS}")
        _check_int("n_init", self.n_init, 1, 10_000)

    def _fit_graph(
        self, similarity: np.ndarray | None, distances: np.ndarray | None, name: str
    ) -> HyperClassClustering:
        """Alg. 2 steps 1-8 from either a similarity (higher = nearer) or a distance matrix."""
        n_classes = len(similarity if distances is None else distances)
        _check_int("n_clusters", self.n_clusters, 2, n_classes, "the eigengap choice")
        _check_int("max_clusters", self.max_clusters, 2, n_classes - 1, "the default bound")
        _check_int("n_neighbors", self.n_neighbors, 1, n_classes - 1, "the smallest connected k")
        score, weight = neighbour_scores(similarity, distances, binary=self.edge_weights == "binary")
        affinity, directed, k = knn_affinity(score, weight, self.n_neighbors)
        max_clusters = self.max_clusters or default_max_clusters(n_classes)
        n_eigen = min(n_classes, (self.n_clusters or max_clusters) + 1)
        # One BLAS / OpenMP thread: at K <= a few thousand threads gain little, and on a shared machine they
        # spin (K = 1000 fit on a loaded 2-core box: 1.6-1.9 s with one thread, 3.8-9.4 s with two).
        with threadpool_limits(limits=1):
            eigenvalues, eigenvectors = generalized_laplacian_eigh(affinity, n_eigen)
            n_clusters = self.n_clusters or eigengap(eigenvalues, max_clusters)
            embedding = row_normalise(eigenvectors[:, :n_clusters])
            kmeans = KMeans(n_clusters=n_clusters, n_init=self.n_init, random_state=self.random_state).fit(embedding)
        in_degree = np.asarray(directed.sum(axis=0)).ravel()
        self.similarity_ = name
        self.classes_ = np.arange(n_classes)
        self.affinity_ = affinity
        self.n_neighbors_ = int(k)
        self.max_clusters_ = int(max_clusters)
        self.eigenvalues_ = eigenvalues
        self.embedding_ = embedding
        self.labels_ = canonical_labels(kmeans.labels_)
        self.n_clusters_ = int(self.labels_.max()) + 1
        self.cluster_sizes_ = np.bincount(self.labels_)
        self.degree_stats_ = {
            "k": int(k),
            "in_degree_min": int(in_degree.min()),
            "in_degree_mean": float(in_degree.mean()),
            "in_degree_max": int(in_degree.max()),
            "hub_class": int(np.argmax(in_degree)),
        }
        return self

    def require_fitted(self) -> None:
        """Raise ConfigError unless fit or fit_similarity has run."""
        if not hasattr(self, "labels_"):
            raise ConfigError("HyperClassClustering is not fitted; call fit(probs, labels) or fit_similarity(S) first")

    def recluster(
        self,
        cluster_id: int,
        probs: ArrayLike | None = None,
        labels: ArrayLike | None = None,
        *,
        similarity: ArrayLike | None = None,
        **params: Any,
    ) -> HyperClassClustering:
        """Repeat Alg. 2 on one hyper-class's classes (the paper's repeatable steps 1-2).

        Pass the original data at every depth: the (N, K0) probs and labels over all original classes,
        or the original (K0, K0) similarity. Member columns are selected through `classes_`, probabilities
        are renormalised over the members (the class posterior given the hyper-class), and only images of
        member classes are used. n_clusters, max_clusters and n_neighbors are chosen afresh unless given
        in `params`. Returns a new fitted estimator whose `classes_` are original class ids.
        """
        self.require_fitted()
        _check_int("cluster_id", cluster_id, 0, self.n_clusters_ - 1)
        if (similarity is None) == (probs is None and labels is None):
            raise ConfigError("recluster needs either probs and labels, or similarity (not both)")
        ids = self.classes_[self.labels_ == cluster_id]
        if len(ids) < 3:
            raise ConfigError(f"hyper-class {cluster_id} has {len(ids)} classes; re-clustering needs at least 3")
        try:
            sub = clone(self).set_params(**{"n_clusters": None, "max_clusters": None, "n_neighbors": None, **params})
        except ValueError as exc:
            raise ConfigError(f"recluster: {exc}") from None
        if similarity is not None:
            full = check_similarity(similarity)
            if len(full) <= ids.max():
                raise DataError(
                    f"similarity is {len(full)}x{len(full)} but this estimator uses original class {ids.max()}"
                )
            sub.fit_similarity(full[np.ix_(ids, ids)])
        else:
            probs, labels = check_calibration(probs, labels)
            if probs.shape[1] <= ids.max():
                raise DataError(
                    f"probs has {probs.shape[1]} columns but this estimator uses original class {ids.max()}"
                )
            rows = np.isin(labels, ids)
            local = np.zeros(probs.shape[1], dtype=np.int64)
            local[ids] = np.arange(len(ids))
            member_probs = probs[np.ix_(rows, ids)]
            sums = member_probs.sum(axis=1, keepdims=True)
            member_probs = np.divide(member_probs, sums, out=np.zeros_like(member_probs), where=sums > 0)
            sub.fit(member_probs, local[labels[rows]])
        sub.classes_ = ids
        return sub

    def score_against(self, coarse_labels: ArrayLike) -> dict[str, float]:
        """Agreement of `labels_` with reference groups (e.g. CIFAR-100 superclasses): ARI and NMI."""
        self.require_fitted()
        coarse = np.asarray(coarse_labels)
        if coarse.shape != self.labels_.shape:
            raise DataError(
                f"coarse_labels must have one entry per class, shape {self.labels_.shape}, got {coarse.shape}"
            )
        return {
            "ari": float(adjusted_rand_score(coarse, self.labels_)),
            "nmi": float(normalized_mutual_info_score(coarse, self.labels_)),
        }

    def resolve_names(self, class_names: Sequence[str] | None = None) -> list[str]:
        """Names of this estimator's classes: `class_names` checked for length, else the original ids."""
        self.require_fitted()
        if class_names is None:
            return [str(c) for c in self.classes_]
        if len(class_names) != len(self.classes_):
            raise ConfigError(f"class_names has {len(class_names)} names for {len(self.classes_)} classes")
        return [str(name) for name in class_names]

    def to_dict(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """JSON-serialisable summary of the fitted hyper-classes (for clusters.json)."""
        names = self.resolve_names(class_names)
        hub = self.degree_stats_["hub_class"]
        return {
            "similarity": self.similarity_,
            "edge_weights": self.edge_weights,
            "n_classes": len(self.classes_),
            "n_clusters": self.n_clusters_,
            "n_clusters_given": self.n_clusters is not None,
            "max_clusters": self.max_clusters_,
            "n_neighbors": self.n_neighbors_,
            "eigenvalues": [float(v) for v in self.eigenvalues_],
            "cluster_sizes": [int(s) for s in self.cluster_sizes_],
            "degree_stats": {**self.degree_stats_, "hub_class": int(self.classes_[hub]), "hub_name": names[hub]},
            "hyper_classes": [
                {
                    "id": c,
                    "classes": [int(self.classes_[i]) for i in np.flatnonzero(self.labels_ == c)],
                    "names": [names[i] for i in np.flatnonzero(self.labels_ == c)],
                }
                for c in range(self.n_clusters_)
            ],
        }
