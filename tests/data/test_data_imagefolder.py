"""Image folders of PNGs: classes, grayscale vs RGB, stray files, mixed sizes, resizing, errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from _data_writers import write_image_folder, write_png

from dynacnn.data import load_dataset
from dynacnn.errors import ConfigError, DataError


def test_rgb_folder(tmp_path: Path) -> None:
    write_image_folder(tmp_path, train_per_class=10, test_per_class=2, size=(12, 10))
    splits = load_dataset("imagefolder", tmp_path)
    info = splits.info
    assert info.class_names == ["cat", "dog", "owl"] and info.input_shape == (3, 10, 12)
    assert (info.augment, info.crop_padding) == ("crop_flip", 1)
    assert (len(splits.train), len(splits.calib), len(splits.test)) == (27, 3, 6)
    assert splits.test.labels.tolist() == [0, 0, 1, 1, 2, 2]
    pixels = np.concatenate([splits.train.images.numpy(), splits.calib.images.numpy()]) / 255
    assert np.allclose(info.mean, pixels.mean(axis=(0, 2, 3)), atol=1e-5)
    assert np.allclose(info.std, pixels.std(axis=(0, 2, 3)), atol=1e-5)
    expected = (np.add.outer(np.arange(10), np.arange(12)) * 7 + 40 * 1 + 1) % 256  # dog/001.png, red channel
    assert np.array_equal(splits.test.images[3, 0].numpy(), expected)


def test_grayscale_folder_keeps_one_channel_and_val_is_accepted(tmp_path: Path) -> None:
    write_image_folder(tmp_path, mode="L", test_dir="val")
    splits = load_dataset("imagefolder", tmp_path)
    assert splits.info.input_shape == (1, 12, 12) and len(splits.info.mean) == 1


def test_non_image_file_is_skipped_with_warning(tmp_path: Path) -> None:
    write_image_folder(tmp_path)
    (tmp_path / "train" / "dog" / "notes.txt").write_text("not an image")
    with pytest.warns(UserWarning, match="notes.txt"):
        splits = load_dataset("imagefolder", tmp_path)
    assert len(splits.train) + len(splits.calib) == 18


def test_mixed_sizes_are_refused_then_resized(tmp_path: Path) -> None:
    write_image_folder(tmp_path, size=(12, 12))
    write_png(tmp_path / "test" / "owl" / "big.png", (20, 16))
    with pytest.raises(DataError, match=r"big.png is 20x16 .* image_size"):
        load_dataset("imagefolder", tmp_path)
    splits = load_dataset("imagefolder", tmp_path, image_size=8)
    assert splits.info.input_shape == (3, 8, 8) and splits.test.images.shape == (7, 3, 8, 8)
    with pytest.raises(ConfigError, match="image_size"):
        load_dataset("imagefolder", tmp_path, image_size=0)


def test_class_mismatch_and_empty_folders(tmp_path: Path) -> None:
    write_image_folder(tmp_path)
    shutil.rmtree(tmp_path / "test" / "owl")
    with pytest.raises(DataError, match="different class folders.*owl"):
        load_dataset("imagefolder", tmp_path)
    (tmp_path / "test" / "owl").mkdir()
    with pytest.raises(DataError, match=r"class folder .*owl holds no image"):
        load_dataset("imagefolder", tmp_path)
    shutil.rmtree(tmp_path / "test")
    with pytest.raises(DataError, match="missing folder"):
        load_dataset("imagefolder", tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("imagefolder", tmp_path / "nowhere")
    with pytest.raises(DataError, match="--data-dir"):
        load_dataset("imagefolder")
