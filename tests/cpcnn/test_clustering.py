"""Tests of Alg. 2 of CP-CNN (hyper-class clustering) on mock softmax outputs with planted groups."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy.linalg import eigh
from scipy.sparse.csgraph import connected_components
from sklearn.cluster import SpectralClustering
from sklearn.metrics import adjusted_rand_score as ari
from sklearn.neighbors import kneighbors_graph

from dynacnn.cpcnn.clustering import HyperClassClustering
from dynacnn.cpcnn.discover import write_clusters
from dynacnn.cpcnn.spectral import confusion_similarity
from dynacnn.errors import ConfigError, DataError

PAPER = {"similarity": "indicator", "edge_weights": "binary"}


def mock_softmax(shared, per_class=20, seed=0, high=5.0, noise=1.0, weak=None):
    """Softmax of mock logits: the true class gets `high`, classes sharing a group with it that group's logit.

    `shared` lists (group id of every class, logit) pairs; `weak` names a class whose own logit is 0
    (a class the mock classifier almost never gets right). Gaussian noise on every logit.
    """
    rng = np.random.default_rng(seed)
    n_classes = len(shared[0][0])
    labels = np.repeat(np.arange(n_classes), per_class)
    logits = noise * rng.standard_normal((len(labels), n_classes))
    for groups, logit in shared:
        logits += logit * (groups[labels][:, None] == groups[None, :])
    logits[np.arange(len(labels)), labels] = high + noise * rng.standard_normal(len(labels))
    if weak is not None:
        logits[labels == weak, weak] = 0.0
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    return probs / probs.sum(axis=1, keepdims=True), labels


def shuffled_groups(sizes, seed):
    """Group id of every class for groups of the given sizes, classes assigned in random order."""
    return np.random.default_rng(seed + 1000).permutation(np.repeat(np.arange(len(sizes)), sizes))


def planted(sizes, seed=0, mid=2.5, **kwargs):
    """Mock softmax outputs over planted groups of the given (unequal) sizes; returns probs, labels, groups."""
    groups = shuffled_groups(sizes, seed)
    probs, labels = mock_softmax([(groups, mid)], seed=seed, **kwargs)
    return probs, labels, groups


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    "sizes", [(12, 28), (5, 9, 16), (3, 6, 10, 15, 26), (3, 4, 6, 8, 10, 14, 20, 35)], ids=lambda s: f"G{len(s)}"
)
def test_recovers_planted_groups(sizes, seed):
    probs, labels, groups = planted(sizes, seed)
    est = HyperClassClustering().fit(probs, labels)
    assert est.n_clusters_ == len(sizes)
    assert ari(groups, est.labels_) >= 0.95
    assert sorted(est.cluster_sizes_.tolist()) == sorted(sizes)


def test_hubness_breaks_paper_variant_not_default():
    sizes, weak = (4, 6, 8, 10, 12, 20), 7
    probs, labels, groups = planted(sizes, seed=0, high=7.0, mid=3.0, weak=weak)
    n_classes = len(groups)
    paper = HyperClassClustering(**PAPER).fit(probs, labels)
    default = HyperClassClustering().fit(probs, labels)
    # the weak class is every class's nearest indicator vector: a star graph, connected at k = 1
    assert paper.degree_stats_["hub_class"] == weak
    assert paper.degree_stats_["in_degree_max"] >= 0.9 * (n_classes - 1)
    assert paper.n_neighbors_ <= 2
    assert ari(groups, paper.labels_) < 0.5
    assert paper.n_clusters_ != len(sizes)
    # the default similarity ignores the diagonal: no hub, planted groups recovered
    assert default.degree_stats_["in_degree_max"] < n_classes / 4
    assert default.n_clusters_ == len(sizes)
    assert ari(groups, default.labels_) >= 0.95


def test_kernel_weights_keep_small_groups_that_binary_weights_absorb():
    sizes = (4, 6, 8, 10, 12, 20)
    probs, labels, groups = planted(sizes, seed=0, high=7.0, mid=3.0)
    kernel = HyperClassClustering().fit(probs, labels)
    binary = HyperClassClustering(edge_weights="binary").fit(probs, labels)
    assert kernel.n_neighbors_ > min(sizes)  # connecting the graph needs edges between groups
    assert kernel.n_clusters_ == len(sizes) and ari(groups, kernel.labels_) >= 0.95
    assert binary.n_clusters_ < len(sizes) and min(binary.cluster_sizes_) > min(sizes)


def test_agrees_with_sklearn_spectral_clustering():
    sizes = (4, 6, 8, 12, 20)
    for seed in range(3):
        probs, labels, _ = planted(sizes, seed, mid=1.5, noise=1.5, per_class=10)
        est = HyperClassClustering(n_clusters=len(sizes), random_state=seed).fit(probs, labels)
        reference = SpectralClustering(affinity="precomputed", n_clusters=len(sizes), random_state=seed)
        assert ari(reference.fit(est.affinity_).labels_, est.labels_) >= 0.9


def test_eigenvalues_solve_generalized_problem():
    probs, labels, _ = planted((5, 9, 16), seed=0, noise=1.5)
    est = HyperClassClustering().fit(probs, labels)
    degree = np.diag(est.affinity_.sum(axis=1))
    expected = eigh(degree - est.affinity_, degree, eigvals_only=True, subset_by_index=[0, len(est.eigenvalues_) - 1])
    np.testing.assert_allclose(est.eigenvalues_, expected, atol=1e-10)
    assert len(est.eigenvalues_) == est.max_clusters_ + 1
    assert np.all(np.diff(est.eigenvalues_) >= -1e-12) and abs(est.eigenvalues_[0]) < 1e-10
    _, vectors = eigh(degree - est.affinity_, degree, subset_by_index=[0, est.n_clusters_ - 1])
    rows = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)  # Alg. 2 step 6
    signs = np.sign(np.sum(rows * est.embedding_, axis=0))
    np.testing.assert_allclose(est.embedding_, rows * signs, atol=1e-8)


def test_paper_graph_is_sklearn_knn_without_self_loops_and_k_is_minimal():
    probs, labels, _ = planted((5, 9, 16), seed=3, noise=2.0, per_class=5)
    est = HyperClassClustering(**PAPER).fit(probs, labels)
    k = est.n_neighbors_
    knn = kneighbors_graph(est.indicators_, k, include_self=False)
    np.testing.assert_array_equal(est.affinity_, ((knn + knn.T).toarray() > 0).astype(float))
    assert connected_components(knn, directed=True, connection="weak")[0] == 1
    if k > 1:
        smaller = kneighbors_graph(est.indicators_, k - 1, include_self=False)
        assert connected_components(smaller, directed=True, connection="weak")[0] > 1


def test_fixed_seed_gives_identical_output():
    probs, labels, _ = planted((4, 6, 8, 12, 20), seed=1, mid=1.5, noise=2.0, per_class=5)
    first = HyperClassClustering(random_state=7).fit(probs, labels)
    second = HyperClassClustering(random_state=7).fit(probs, labels)
    np.testing.assert_array_equal(first.labels_, second.labels_)
    np.testing.assert_array_equal(first.eigenvalues_, second.eigenvalues_)
    np.testing.assert_array_equal(first.affinity_, second.affinity_)
    assert first.to_dict() == second.to_dict()


def test_confusion_similarity_ignores_each_class_confidence():
    probs, labels, _ = planted((3, 4), seed=0, per_class=4)
    v = HyperClassClustering().fit(probs, labels).indicators_
    # the share of class i's misplaced probability that lands on j, averaged with the reverse share
    share = v / (1 - np.diagonal(v))[:, None]
    expected = (share + share.T) / 2
    np.fill_diagonal(expected, 0.0)
    np.testing.assert_allclose(confusion_similarity(v), expected)
    sharper = v * np.linspace(0.2, 1.0, 7)[:, None]
    np.fill_diagonal(sharper, 0.0)
    np.fill_diagonal(sharper, 1 - sharper.sum(axis=1))  # same confusion pattern, different confidences
    np.testing.assert_allclose(confusion_similarity(sharper), expected)


def test_indicator_vectors_are_class_means():
    probs, labels, _ = planted((3, 4), seed=0, per_class=4)
    est = HyperClassClustering().fit(probs, labels)
    for c in range(7):
        np.testing.assert_allclose(est.indicators_[c], probs[labels == c].mean(axis=0))


def test_precomputed_similarity_matches_probability_path_and_recovers_blocks():
    probs, labels, groups = planted((5, 9, 16), seed=0)
    est = HyperClassClustering().fit(probs, labels)
    pre = HyperClassClustering().fit_similarity(confusion_similarity(est.indicators_))
    np.testing.assert_array_equal(pre.labels_, est.labels_)
    assert pre.similarity_ == "precomputed" and pre.indicators_ is None

    rng = np.random.default_rng(0)
    blocks = shuffled_groups((3, 5, 12), seed=0)
    s = np.where(blocks[:, None] == blocks[None, :], 1.0, 0.05) * rng.uniform(0.5, 1.0, (20, 20))
    block_est = HyperClassClustering().fit_similarity((s + s.T) / 2)
    assert block_est.n_clusters_ == 3 and ari(blocks, block_est.labels_) == 1.0


def test_recluster_splits_a_hyper_class_into_its_subgroups():
    fine = shuffled_groups((5, 7, 9, 6, 8), seed=0)
    coarse = np.array([0, 0, 0, 1, 1])[fine]
    probs, labels = mock_softmax([(fine, 3.0), (coarse, 1.5)], seed=0)
    root = HyperClassClustering(n_clusters=2).fit(probs, labels)
    assert ari(coarse, root.labels_) == 1.0
    for cluster in range(2):
        members = np.flatnonzero(root.labels_ == cluster)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # member probabilities are renormalised, not warned about
            sub = root.recluster(cluster, probs, labels)
        np.testing.assert_array_equal(sub.classes_, members)
        assert sub.n_clusters_ == len(np.unique(fine[members]))
        assert ari(fine[members], sub.labels_) >= 0.95
        assert sub.n_clusters is None and sub.random_state == root.random_state
    big = int(np.argmax(root.cluster_sizes_))
    sub = root.recluster(big, probs, labels)
    deeper = sub.recluster(int(np.argmax(sub.cluster_sizes_)), probs, labels, n_clusters=2)
    assert set(deeper.classes_) <= set(sub.classes_) and deeper.n_clusters_ == 2

    similarity = confusion_similarity(root.indicators_)
    pre_root = HyperClassClustering(n_clusters=2).fit_similarity(similarity)
    pre_sub = pre_root.recluster(0, similarity=similarity)
    assert ari(fine[pre_sub.classes_], pre_sub.labels_) >= 0.95


def test_score_against_and_to_dict():
    probs, labels, groups = planted((5, 9, 16), seed=0)
    est = HyperClassClustering().fit(probs, labels)
    assert est.score_against(groups) == {"ari": 1.0, "nmi": 1.0}
    partial = est.score_against(np.arange(30) % 2)
    assert partial["ari"] < 0.5 and 0 <= partial["nmi"] < 0.5
    names = [f"class{i}" for i in range(30)]
    summary = json.loads(json.dumps(est.to_dict(names), allow_nan=False))
    assert summary["n_clusters"] == 3 and summary["n_neighbors"] == est.n_neighbors_
    assert summary["similarity"] == "confusion" and summary["cluster_sizes"] == est.cluster_sizes_.tolist()
    assert sorted(n for h in summary["hyper_classes"] for n in h["names"]) == sorted(names)
    for h in summary["hyper_classes"]:
        assert len(set(groups[h["classes"]])) == 1
    assert len(summary["eigenvalues"]) == len(est.eigenvalues_)
    assert summary["degree_stats"]["hub_name"] == names[est.degree_stats_["hub_class"]]


def test_write_clusters_writes_the_json_and_both_plots(tmp_path):
    probs, labels, _ = planted((5, 9, 16), seed=0)
    est = HyperClassClustering().fit(probs, labels)
    names = [f"c{i}" for i in range(30)]
    summary = write_clusters(tmp_path, est, names)
    assert json.loads((tmp_path / "clusters.json").read_text()) == json.loads(json.dumps(summary))
    for name in ("eigenvalues.png", "similarity.png"):
        with Image.open(tmp_path / name) as image:
            image.verify()
    with pytest.raises(ConfigError, match="class_names"):
        write_clusters(tmp_path / "bad", est, ["a"])
    with pytest.raises(ConfigError, match="not fitted"):
        write_clusters(tmp_path / "unfitted", HyperClassClustering(), names)
    assert not (tmp_path / "bad").exists() and not (tmp_path / "unfitted").exists()


def test_rows_not_summing_to_one_are_renormalised_with_a_warning():
    probs, labels, _ = planted((5, 9, 16), seed=0)
    factors = np.random.default_rng(0).uniform(0.5, 3.0, (len(probs), 1))
    with pytest.warns(UserWarning, match="renormalising"):
        scaled = HyperClassClustering().fit(probs * factors, labels)
    reference = HyperClassClustering().fit(probs, labels)
    np.testing.assert_allclose(scaled.indicators_, reference.indicators_)
    np.testing.assert_array_equal(scaled.labels_, reference.labels_)


def _bad_calibration(case):
    """(probs, labels, estimator kwargs) for one kind of bad input."""
    probs, labels, _ = planted((3, 4), seed=0, per_class=3)
    kwargs = {}
    if case == "nan":
        probs[2, 1] = np.nan
    elif case == "inf":
        probs[2, 1] = np.inf
    elif case == "negative":
        probs[4, 0] = -0.1
    elif case == "zero row":
        probs[4] = 0.0
    elif case == "label out of range":
        labels = labels.copy()
        labels[0] = 7
    elif case == "negative label":
        labels = labels.copy()
        labels[0] = -1
    elif case == "label length":
        labels = labels[:-1]
    elif case == "float labels":
        labels = labels.astype(float)
    elif case == "empty class":
        keep = labels != 3
        probs, labels = probs[keep], labels[keep]
    elif case == "two classes":
        probs, labels = np.full((4, 2), 0.5), np.array([0, 1, 0, 1])
    elif case == "1-D probs":
        probs = probs[0]
    elif case.startswith("param "):
        name, value = case[6:].split("=")
        kwargs = {name: None if value == "None" else int(value) if value.lstrip("-").isdigit() else value}
    return probs, labels, kwargs


@pytest.mark.parametrize(
    ("case", "error", "match"),
    [
        ("nan", DataError, "NaN or inf"),
        ("inf", DataError, "NaN or inf"),
        ("negative", DataError, "negative"),
        ("zero row", DataError, "sums to 0"),
        ("label out of range", DataError, r"labels\[0\] = 7"),
        ("negative label", DataError, r"labels\[0\] = -1"),
        ("label length", DataError, "shape"),
        ("float labels", DataError, "integer"),
        ("empty class", DataError, "class 3 has no calibration images"),
        ("two classes", DataError, "K >= 3"),
        ("1-D probs", DataError, "shape"),
        ("param n_clusters=8", ConfigError, "n_clusters=8"),
        ("param n_clusters=1", ConfigError, "n_clusters=1"),
        ("param max_clusters=7", ConfigError, "max_clusters=7"),
        ("param n_neighbors=0", ConfigError, "n_neighbors=0"),
        ("param n_neighbors=7", ConfigError, "n_neighbors=7"),
        ("param n_init=0", ConfigError, "n_init=0"),
        ("param similarity=cosine", ConfigError, "similarity='cosine'"),
        ("param edge_weights=gauss", ConfigError, "edge_weights='gauss'"),
    ],
)
def test_bad_calibration_input_raises_one_line_error(case, error, match):
    probs, labels, kwargs = _bad_calibration(case)
    with pytest.raises(error, match=match) as info:
        HyperClassClustering(**kwargs).fit(probs, labels)
    assert "\n" not in str(info.value)


def test_given_n_neighbors_that_disconnects_the_graph_is_refused():
    probs, labels, _ = planted((5, 9, 16), seed=0)
    auto = HyperClassClustering().fit(probs, labels)
    assert auto.n_neighbors_ > 1
    with pytest.raises(ConfigError, match=f"n_neighbors={auto.n_neighbors_ - 1} leaves"):
        HyperClassClustering(n_neighbors=auto.n_neighbors_ - 1).fit(probs, labels)


def test_bad_similarity_raises_one_line_error():
    s = np.ones((6, 6))
    isolated = np.kron(np.eye(2), np.ones((3, 3)))
    asymmetric = s.copy()
    asymmetric[0, 1] = 2.0
    negative = s.copy()
    negative[0, 1] = negative[1, 0] = -1.0
    nan = s.copy()
    nan[0, 1] = nan[1, 0] = np.nan
    cases = [
        (isolated, "no k makes the class graph connected"),
        (np.ones((6, 5)), "square"),
        (asymmetric, "not symmetric"),
        (negative, "negative"),
        (nan, "NaN or inf"),
        (np.ones((2, 2)), "K >= 3"),
    ]
    for matrix, match in cases:
        with pytest.raises(DataError, match=match) as info:
            HyperClassClustering().fit_similarity(matrix)
        assert "\n" not in str(info.value)


def test_misuse_of_fitted_api_raises():
    probs, labels, groups = planted((2, 3), seed=0, per_class=3)
    with pytest.raises(ConfigError, match="not fitted"):
        HyperClassClustering().to_dict()
    est = HyperClassClustering(n_clusters=2).fit(probs, labels)
    with pytest.raises(ConfigError, match="cluster_id=5"):
        est.recluster(5, probs, labels)
    with pytest.raises(ConfigError, match="either probs and labels, or similarity"):
        est.recluster(0)
    with pytest.raises(ConfigError, match="Invalid parameter 'depth'"):
        est.recluster(int(np.argmax(est.cluster_sizes_)), probs, labels, depth=2)
    with pytest.raises(ConfigError, match="needs at least 3"):
        est.recluster(int(np.argmin(est.cluster_sizes_)), probs, labels)
    with pytest.raises(DataError, match="one entry per class"):
        est.score_against(groups[:-1])


@settings(max_examples=40, deadline=None)
@given(
    n_classes=st.integers(3, 12),
    per_class=st.integers(1, 3),
    scale=st.sampled_from([0.0, 0.5, 3.0, 10.0]),
    seed=st.integers(0, 2**16),
    similarity=st.sampled_from(["confusion", "indicator"]),
    edge_weights=st.sampled_from(["kernel", "binary"]),
)
def test_fitted_attributes_are_well_formed(n_classes, per_class, scale, seed, similarity, edge_weights):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), per_class)
    logits = np.round(scale * rng.standard_normal((len(labels), n_classes)))  # rounding makes ties
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    est = HyperClassClustering(similarity=similarity, edge_weights=edge_weights, n_init=2).fit(probs, labels)
    ids = est.labels_
    assert ids.shape == (n_classes,) and set(ids.tolist()) == set(range(est.n_clusters_))
    _, first = np.unique(ids, return_index=True)
    assert np.all(np.diff(first) > 0)  # ids ordered by smallest member class
    assert 2 <= est.n_clusters_ <= est.max_clusters_ <= n_classes - 1
    assert est.cluster_sizes_.sum() == n_classes
    a = est.affinity_
    assert np.array_equal(a, a.T) and (a >= 0).all() and not np.diagonal(a).any()
    assert connected_components(a > 0)[0] == 1
    assert np.all(np.diff(est.eigenvalues_) >= -1e-9)
    assert 1 <= est.n_neighbors_ <= n_classes - 1


def test_estimator_is_exported_from_the_cpcnn_package():
    from dynacnn.cpcnn import HyperClassClustering as exported
    from dynacnn.cpcnn.clustering import HyperClassClustering as defined

    assert exported is defined
