"""Calibration hold-out, limits and subsets: sizes, disjointness, stratification, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dynacnn.data import DATASETS, DatasetInfo, Split, load_dataset
from dynacnn.data.splits import make_splits, stratified_sample
from dynacnn.errors import ConfigError, DataError

SMALL = {"samples_per_class": 40, "test_samples_per_class": 10, "image_size": 8}


def _proportions(labels: torch.Tensor, k: int) -> np.ndarray:
    return np.bincount(labels.numpy(), minlength=k) / len(labels)


def test_digits_split_sizes_disjoint_and_stratified() -> None:
    splits = load_dataset("digits", calib_fraction=0.2, seed=3)
    train, calib, test = (set(s.indices.tolist()) for s in (splits.train, splits.calib, splits.test))
    assert len(test) == 449 and len(train) + len(calib) == 1797 - 449
    assert len(calib) == round(0.2 * (1797 - 449))
    assert not (train & calib or train & test or calib & test)  # digits indices share one source set
    pool = _proportions(torch.cat([splits.train.labels, splits.calib.labels]), 10)
    assert np.abs(_proportions(splits.calib.labels, 10) - pool).max() < 0.01
    assert np.abs(_proportions(splits.test.labels, 10) - pool).max() < 0.01
    saved = splits.split_indices()
    assert saved["calib"] == splits.calib.indices.tolist() and set(saved) == {"train", "calib", "test"}


def test_splits_are_deterministic_per_seed_and_differ_across_seeds() -> None:
    first = load_dataset("synthetic", seed=1, **SMALL).split_indices()
    assert load_dataset("synthetic", seed=1, **SMALL).split_indices() == first
    second = load_dataset("synthetic", seed=2, **SMALL).split_indices()
    assert second["calib"] != first["calib"] and second["test"] == first["test"]


def test_limits_are_stratified_subsets() -> None:
    full = load_dataset("synthetic", **SMALL)
    limited = load_dataset("synthetic", train_limit=50, test_limit=30, **SMALL)
    assert (len(limited.train), len(limited.test)) == (50, 30)
    assert set(limited.train.indices.tolist()) <= set(full.train.indices.tolist())
    assert np.bincount(limited.test.labels.numpy()).tolist() == [3] * 10
    assert np.bincount(limited.train.labels.numpy()).tolist() == [5] * 10
    assert limited.calib.indices.tolist() == full.calib.indices.tolist()


def test_subset() -> None:
    labels = torch.tensor([0] * 30 + [1] * 60 + [2] * 10)
    split = Split(torch.zeros(100, 1, 2, 2, dtype=torch.uint8), labels, torch.arange(100) + 1000)
    part = split.subset(20, seed=5)
    assert np.bincount(part.labels.numpy()).tolist() == [6, 12, 2]
    assert part.indices.tolist() == split.subset(20, seed=5).indices.tolist()
    assert part.indices.tolist() != split.subset(20, seed=6).indices.tolist()
    assert np.bincount(split.subset(3).labels.numpy()).tolist() == [1, 1, 1]
    assert split.subset(500) is split
    with pytest.raises(ConfigError, match="3 classes"):
        split.subset(2)


def test_stratified_sample_keeps_every_class_when_possible() -> None:
    labels = np.array([0] * 97 + [1, 1, 2])
    chosen = stratified_sample(labels, 5, seed=0)
    assert len(chosen) == 5 and set(labels[chosen]) == {0, 1, 2}
    assert len(np.unique(chosen)) == 5


@pytest.mark.parametrize("fraction", [0, -0.1, 0.51, 1.0, "0.1"])
def test_bad_calib_fraction(fraction: object) -> None:
    with pytest.raises(ConfigError, match="calib_fraction"):
        load_dataset("digits", calib_fraction=fraction)


def test_bad_names_and_options() -> None:
    with pytest.raises(ConfigError, match="fashion-mnist, cifar10"):
        load_dataset("mnist")
    with pytest.raises(ConfigError, match="no option stream.*train_limit"):
        load_dataset("digits", stream=True)
    with pytest.raises(ConfigError, match="train_limit"):
        load_dataset("digits", train_limit=0)
    assert DATASETS == ("fashion-mnist", "cifar10", "cifar100", "imagefolder", "digits", "synthetic")


def test_too_few_samples_for_a_calibration_split() -> None:
    info = DatasetInfo("tiny", ["a"], (1, 2, 2), (0.5,), (0.2,), "none", 0)
    one = (np.zeros((1, 1, 2, 2), np.uint8), np.zeros(1, np.int64), np.arange(1))
    with pytest.raises(DataError, match="too few"):
        make_splits(info, one, one, calib_fraction=0.1, seed=0)


def test_split_refuses_wrong_tensors() -> None:
    with pytest.raises(DataError, match="uint8"):
        Split(torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.int64), torch.arange(2))
    with pytest.raises(DataError, match="same length"):
        Split(torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64), torch.arange(2))
