"""Options every dataset accepts: mean / std overrides and image_size (with a PIL reference for the resize)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _data_writers import write_cifar10, write_fashion_mnist, write_image_folder
from PIL import Image

from dynacnn.data import batches, load_dataset
from dynacnn.data.adjust import resize_images
from dynacnn.errors import ConfigError

SYNTHETIC = {"num_classes": 4, "num_groups": 2, "samples_per_class": 10, "test_samples_per_class": 3}


def _every_dataset(root: Path) -> dict[str, tuple[str | None, dict]]:
    """name -> (data_dir, options) for a small copy of every dataset."""
    write_fashion_mnist(root / "fmnist")
    write_cifar10(root)
    write_image_folder(root / "folder", train_per_class=10)
    return {
        "fashion-mnist": (str(root / "fmnist"), {}),
        "cifar10": (str(root), {}),
        "imagefolder": (str(root / "folder"), {}),
        "imagefolder-stream": (str(root / "folder"), {"stream": True, "num_workers": 0}),
        "digits": (None, {}),
        "synthetic": (None, SYNTHETIC),
    }


def test_mean_and_std_override_every_dataset_and_reach_the_batches(tmp_path: Path) -> None:
    for name, (data_dir, options) in _every_dataset(tmp_path).items():
        dataset = name.removesuffix("-stream")
        channels = load_dataset(dataset, data_dir, **options).info.input_shape[0]
        mean, std = tuple(0.1 * (c + 1) for c in range(channels)), tuple(0.2 + 0.1 * c for c in range(channels))
        data = load_dataset(dataset, data_dir, mean=list(mean), std=std, **options)
        assert (data.info.mean, data.info.std) == (mean, std), name
        x, _ = next(batches(data.test, data.info, 4))
        raw = data.test.read_images(0, 4).float() / 255
        expected = (raw - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
        assert torch.allclose(x, expected, atol=1e-6), name
        only_mean = load_dataset(dataset, data_dir, mean=mean, **options).info
        assert only_mean.mean == mean and only_mean.std == load_dataset(dataset, data_dir, **options).info.std
        with pytest.raises(ConfigError, match=rf"--mean/--std need {channels} value") as error:
            load_dataset(dataset, data_dir, std=(0.5,) * (channels + 1), **options)
        assert "\n" not in str(error.value)
        with pytest.raises(ConfigError, match="--std .* positive"):
            load_dataset(dataset, data_dir, std=(-0.5,) * channels, **options)


def test_image_size_resizes_every_in_memory_dataset(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path)
    small = load_dataset("fashion-mnist", tmp_path)
    large = load_dataset("fashion-mnist", tmp_path, image_size=32)
    assert large.info.input_shape == (1, 32, 32) and large.train.images.shape[1:] == (1, 32, 32)
    assert large.info.crop_padding == 2 and large.split_indices() == small.split_indices()
    for source, resized in zip(small.test.images[:5], large.test.images[:5]):  # PIL's bilinear as reference
        reference = np.asarray(Image.fromarray(source[0].numpy()).resize((32, 32), Image.Resampling.BILINEAR))
        assert np.abs(resized[0].numpy().astype(int) - reference).max() <= 1
    digits = load_dataset("digits", image_size=16)
    assert digits.info.input_shape == (1, 16, 16) and digits.info.crop_padding == 0
    shrunk, source = load_dataset("digits", image_size=4).train.images[:5], load_dataset("digits").train.images[:5]
    for image, resized in zip(source, shrunk):  # downscaling: PIL's antialiased bilinear too
        reference = np.asarray(Image.fromarray(image[0].numpy()).resize((4, 4), Image.Resampling.BILINEAR))
        assert np.abs(resized[0].numpy().astype(int) - reference).max() <= 1
    assert load_dataset("synthetic", image_size=12, **SYNTHETIC).info.input_shape == (3, 12, 12)
    write_cifar10(tmp_path / "c")
    cifar = load_dataset("cifar10", tmp_path / "c", image_size=64)
    assert cifar.info.input_shape == (3, 64, 64) and cifar.info.crop_padding == 8


def test_resize_of_a_non_square_image_keeps_the_centre() -> None:
    image = np.zeros((1, 1, 4, 8), dtype=np.uint8)
    image[..., 2:6] = 200  # the central square of a 4 x 8 image
    assert np.array_equal(resize_images(image, 4), np.full((1, 1, 4, 4), 200, dtype=np.uint8))
