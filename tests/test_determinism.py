"""Determinism on CPU: same seed and data, same splits, weights, metrics, clusters and routing.

What is and is not deterministic (GPU included) is written down in docs/bad-inputs.md, "Determinism".
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dynacnn.cli import main
from dynacnn.cpcnn.clustering import HyperClassClustering
from dynacnn.cpcnn.policy import activate, confusion_matrix
from dynacnn.data import batches, load_dataset

TINY = [
    "--data",
    "digits",
    "--width",
    "0.125",
    "--stem",
    "small",
    "--batch-size",
    "16",
    "--train-limit",
    "48",
    "--device",
    "cpu",
    "--epochs",
    "1",
]
# Wall-clock fields: the only ones allowed to differ between two identical runs.
TIMING_KEYS = {"images_per_s", "train_seconds_this_process"}


def train(out: Path, *extra: str) -> Path:
    """`dynacnn train` in-process (1 epoch, 48 digits images); returns the run directory."""
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *TINY, *extra, "--out", str(out)])
        raise SystemExit(0)
    assert not exit_info.value.code
    return out


def without_timing(obj):
    """`obj` (nested dicts / lists from metrics.json or run.json) minus the wall-clock fields."""
    if isinstance(obj, dict):
        return {key: without_timing(value) for key, value in obj.items() if key not in TIMING_KEYS}
    if isinstance(obj, list):
        return [without_timing(value) for value in obj]
    return obj


# ------------------------------------------------------------------------------------------------- splits


def test_same_seed_gives_identical_splits_and_another_seed_different_ones():
    a, b, c = (load_dataset("digits", seed=s) for s in (0, 0, 1))
    assert a.split_indices() == b.split_indices()
    for name in ("train", "calib", "test"):
        assert torch.equal(getattr(a, name).images, getattr(b, name).images)
        assert torch.equal(getattr(a, name).labels, getattr(b, name).labels)
    assert a.split_indices()["calib"] != c.split_indices()["calib"]
    assert a.split_indices()["train"] != c.split_indices()["train"]
    # digits' test split is fixed whatever the seed (it plays the official test set); calib never overlaps it
    assert a.split_indices()["test"] == c.split_indices()["test"]
    assert not set(c.split_indices()["calib"]) & set(c.split_indices()["test"])


def test_train_limit_subsets_are_seeded():
    a, b, c = (load_dataset("digits", seed=s, train_limit=50, test_limit=30) for s in (2, 2, 3))
    assert a.split_indices() == b.split_indices()
    assert a.split_indices()["train"] != c.split_indices()["train"]
    assert a.split_indices()["test"] != c.split_indices()["test"]


def test_batches_with_the_same_generator_seed_are_identical(digits):
    def draw(seed):
        generator = torch.Generator().manual_seed(seed)
        return list(batches(digits.train, digits.info, 64, shuffle=True, augment=True, generator=generator))

    first, again, other = draw(5), draw(5), draw(6)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(first, again))
    assert not torch.equal(first[0][1], other[0][1])


# ------------------------------------------------------------------------------------------------ training


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """The same tiny training twice in one process, and once more with another seed."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("determinism")
    runs = train(root / "a"), train(root / "b"), train(root / "seed1", "--seed", "1")
    torch.set_num_threads(threads)
    return runs


def test_same_seed_gives_identical_weights(two_runs):
    a, b, _ = (load_file(str(run / "model.safetensors")) for run in two_runs)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_same_seed_gives_identical_metrics_splits_and_run_json(two_runs):
    a, b, _ = two_runs
    for name in ("metrics.json", "run.json", "splits.json"):
        first, second = (without_timing(json.loads((run / name).read_text())) for run in (a, b))
        assert first == second, name
    history = json.loads((a / "metrics.json").read_text())["history"]
    assert {"train_loss", "calib_top1", "calib_loss"} <= set(history[0])


def test_same_seed_gives_identical_checkpoint_states(two_runs):
    from dynacnn.train import load_checkpoint

    a, b = (load_checkpoint(run / "checkpoint.pt") for run in two_runs[:2])
    assert torch.equal(a["generator"], b["generator"]) and torch.equal(a["torch_rng"], b["torch_rng"])
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_another_seed_gives_other_weights_and_splits(two_runs):
    a, _, other = two_runs
    wa, wo = (load_file(str(run / "model.safetensors")) for run in (a, other))
    assert any(not torch.equal(wa[key], wo[key]) for key in wa)
    assert json.loads((a / "splits.json").read_text()) != json.loads((other / "splits.json").read_text())


def test_eval_of_a_run_is_repeatable(two_runs, capsys):
    scores = []
    for _ in range(2):
        with pytest.raises(SystemExit):
            main(["eval", "--run", str(two_runs[0]), "--device", "cpu", "--json"])
            raise SystemExit(0)
        scores.append(json.loads(capsys.readouterr().out))
    assert scores[0]["top1"] == scores[1]["top1"] and scores[0]["top5"] == scores[1]["top5"]


# ------------------------------------------------------------------------------------- clustering (Alg. 2)


def _calibration(seed: int = 0, groups: int = 4, per_group: int = 3, per_class: int = 10):
    """Probabilities of a classifier that confuses classes within groups of `per_group`."""
    rng = np.random.default_rng(seed)
    n_classes = groups * per_group
    labels = np.repeat(np.arange(n_classes), per_class)
    logits = rng.normal(scale=0.5, size=(len(labels), n_classes))
    same_group = (np.arange(n_classes)[None] // per_group) == (labels[:, None] // per_group)
    logits += 2.0 * same_group
    logits[np.arange(len(labels)), labels] += 2.5
    probs = np.exp(logits)
    return probs / probs.sum(axis=1, keepdims=True), labels


@pytest.mark.parametrize("params", [{}, {"n_clusters": 4}, {"similarity": "indicator", "edge_weights": "binary"}])
def test_clustering_is_deterministic_for_a_seed(params):
    probs, labels = _calibration()
    estimator = HyperClassClustering(random_state=7, **params)
    first = estimator.fit(probs, labels).to_dict()
    first_embedding = estimator.embedding_.copy()
    again = HyperClassClustering(random_state=7, **params).fit(probs.copy(), labels.copy())
    assert first == again.to_dict()  # labels, eigenvalues, k, cluster sizes, degree stats
    assert np.array_equal(first_embedding, again.embedding_)
    estimator.fit(probs, labels)  # the same estimator fitted again
    assert np.array_equal(estimator.labels_, again.labels_)
    assert np.array_equal(estimator.eigenvalues_, again.eigenvalues_)


def test_clustering_finds_the_planted_groups():
    """Guard for the test above: the fit is meaningful, not a constant that trivially repeats."""
    probs, labels = _calibration()
    fitted = HyperClassClustering(random_state=0).fit(probs, labels)
    assert fitted.labels_.tolist() == np.repeat(np.arange(4), 3).tolist()


def test_clustering_of_another_sample_differs_in_eigenvalues():
    probs, labels = _calibration(seed=0)
    other_probs, other_labels = _calibration(seed=1)
    a = HyperClassClustering(random_state=0).fit(probs, labels)
    b = HyperClassClustering(random_state=0).fit(other_probs, other_labels)
    assert not np.array_equal(a.eigenvalues_, b.eigenvalues_)


# ----------------------------------------------------------------------------------- activation (Alg. 1)


@pytest.mark.parametrize("rule, weighting", [("top", "clustifier"), ("confusion", "eq3"), ("confusion", "clustifier")])
def test_activate_is_deterministic(rule, weighting):
    generator = torch.Generator().manual_seed(0)
    v = torch.softmax(torch.randn(256, 6, generator=generator) * 2, dim=1)
    v[:8] = torch.tensor([0.3, 0.3, 0.1, 0.1, 0.1, 0.1])  # exact ties
    confusion = confusion_matrix(
        torch.randint(0, 6, (500,), generator=generator), torch.randint(0, 6, (500,), generator=generator), 6
    )
    runs = [activate(v.clone(), confusion.clone(), 0.7, rule, weighting) for _ in range(3)]
    for active, weights in runs[1:]:
        assert torch.equal(active, runs[0][0]) and torch.equal(weights, runs[0][1])
    # a batch gives the same rows as the rows one at a time (no cross-row effects)
    for row in (0, 9, 100):
        active, weights = activate(v[row : row + 1], confusion, 0.7, rule, weighting)
        assert torch.equal(active[0], runs[0][0][row]) and torch.allclose(weights[0], runs[0][1][row])


def test_activate_breaks_ties_by_lowest_index():
    v = torch.tensor([[0.3, 0.3, 0.2, 0.2]])
    active, _ = activate(v, None, 0.25)  # only the first of the tied top two
    assert active.tolist() == [[True, False, False, False]]
    active, _ = activate(v, None, 0.65)  # 0.3 + 0.3 = 0.6 <= 0.65: the first of the tied 0.2s joins too
    assert active.tolist() == [[True, True, True, False]]
