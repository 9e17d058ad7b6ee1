"""The built-in datasets: scikit-learn digits and the synthetic grouped classes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dynacnn.data import load_dataset
from dynacnn.data.synthetic import default_group_sizes
from dynacnn.errors import ConfigError


def test_digits() -> None:
    from sklearn.datasets import load_digits

    splits = load_dataset("digits")
    info = splits.info
    assert info.input_shape == (1, 8, 8) and info.augment == "none" and info.class_names[3] == "3"
    assert splits.train.images.dtype == torch.uint8 and int(splits.train.images.max()) == 255
    source = load_digits()
    idx = splits.calib.indices.numpy()
    assert np.array_equal(splits.calib.labels.numpy(), source.target[idx])
    assert np.allclose(splits.calib.images[:, 0].numpy() / 255 * 16, source.images[idx], atol=0.04)
    assert load_dataset("digits", seed=9).split_indices()["test"] == splits.split_indices()["test"]


def test_synthetic_defaults_and_determinism() -> None:
    splits = load_dataset("synthetic")
    info = splits.info
    assert info.input_shape == (3, 16, 16) and info.num_classes == 10 and info.augment == "crop"
    assert sorted(np.bincount(info.coarse_labels).tolist()) == [3, 3, 4]
    assert info.coarse_names == ["group0", "group1", "group2"]
    assert all(name.startswith(f"g{g}_c") for name, g in zip(info.class_names, info.coarse_labels))
    assert (len(splits.train) + len(splits.calib), len(splits.test)) == (2000, 500)
    again = load_dataset("synthetic")
    assert torch.equal(again.train.images, splits.train.images) and again.info == info
    other = load_dataset("synthetic", data_seed=1)
    assert not torch.equal(other.test.images, splits.test.images)


def test_synthetic_group_sizes() -> None:
    assert default_group_sizes(10, 3) == [4, 3, 3]
    assert default_group_sizes(9, 3) == [4, 3, 2]
    assert default_group_sizes(3, 3) == [1, 1, 1]
    info = load_dataset("synthetic", num_classes=7, group_sizes=[5, 2], samples_per_class=10, image_size=8).info
    assert np.bincount(info.coarse_labels).tolist() == [5, 2] and info.input_shape == (3, 8, 8)
    with pytest.raises(ConfigError, match="sum to num_classes"):
        load_dataset("synthetic", num_classes=7, group_sizes=[5, 3])
    with pytest.raises(ConfigError, match="num_groups"):
        load_dataset("synthetic", num_classes=4, num_groups=5)
    with pytest.raises(ConfigError, match="noise"):
        load_dataset("synthetic", noise=-1)


def test_synthetic_confusions_stay_within_groups() -> None:
    splits = load_dataset("synthetic", channels=1, samples_per_class=100, test_samples_per_class=40)
    groups = np.array(splits.info.coarse_labels)
    train = splits.train.images.flatten(1).float()
    centroids = torch.stack([train[splits.train.labels == k].mean(0) for k in range(10)])
    predicted = torch.cdist(splits.test.images.flatten(1).float(), centroids).argmin(1).numpy()
    truth = splits.test.labels.numpy()
    wrong = predicted != truth
    assert 0.02 < wrong.mean() < 0.5  # neither trivial nor hopeless
    assert (groups[predicted[wrong]] == groups[truth[wrong]]).mean() > 0.9
    assert (groups[predicted] == groups[truth]).mean() > 0.97
