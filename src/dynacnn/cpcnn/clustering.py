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

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.spatial.distance import cdist
from sklearn.base import BaseEstimator, clone
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from threadpoolctl import threadpool_limits

from dynacnn.cpcnn.spectral import (
    canonical_labels,
    check_calibration,
    check_int,
    check_similarity,
    confusion_similarity,
    default_max_clusters,
    eigengap,
    generalized_laplacian_eigh,
    indicator_vectors,
    knn_affinity,
    neighbour_scores,
    row_normalise,
)
from dynacnn.errors import ConfigError, DataError

SIMILARITIES = ("confusion", "indicator")
EDGE_WEIGHTS = ("kernel", "binary")


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
        check_int("n_init", self.n_init, 1, 10_000)

    def _fit_graph(
        self, similarity: np.ndarray | None, distances: np.ndarray | None, name: str
    ) -> HyperClassClustering:
        """Alg. 2 steps 1-8 from either a similarity (higher = nearer) or a distance matrix."""
        n_classes = len(similarity if distances is None else distances)
        check_int("n_clusters", self.n_clusters, 2, n_classes, "the eigengap choice")
        check_int("max_clusters", self.max_clusters, 2, n_classes - 1, "the default bound")
        check_int("n_neighbors", self.n_neighbors, 1, n_classes - 1, "the smallest connected k")
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
        check_int("cluster_id", cluster_id, 0, self.n_clusters_ - 1)
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
