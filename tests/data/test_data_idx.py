"""Fashion-MNIST IDX reader: real formats, every corruption a DataError, the installed dataset."""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _data_writers import FMNIST_FILES, idx_bytes, write_fashion_mnist

from dynacnn.data import load_dataset
from dynacnn.data.idx import CLASS_NAMES, DEFAULT_DIR, IMAGES_MAGIC, LABELS_MAGIC, parse_idx
from dynacnn.errors import DataError


@pytest.mark.parametrize("gz", [True, False])
def test_loads_gzipped_and_plain_idx(tmp_path: Path, gz: bool) -> None:
    written = write_fashion_mnist(tmp_path, per_class=10, test_per_class=3, gz=gz)
    splits = load_dataset("fashion-mnist", tmp_path)
    assert splits.info.class_names == CLASS_NAMES and splits.info.input_shape == (1, 28, 28)
    assert (splits.info.augment, splits.info.crop_padding) == ("crop_flip", 2)
    assert (len(splits.train), len(splits.calib), len(splits.test)) == (90, 10, 30)
    train_images, train_labels = written["train"]
    for split in (splits.train, splits.calib):
        idx = split.indices.numpy()
        assert np.array_equal(split.images[:, 0].numpy(), train_images[idx])
        assert np.array_equal(split.labels.numpy(), train_labels[idx])
    assert np.array_equal(splits.test.images[:, 0].numpy(), written["test"][0])
    assert splits.test.images.dtype == torch.uint8 and splits.test.labels.dtype == torch.int64


def test_missing_directory_names_path_and_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist") as err:
        load_dataset("fashion-mnist", tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="is empty"):
        load_dataset("fashion-mnist", tmp_path / "empty")


def test_missing_single_file_is_named(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        load_dataset("fashion-mnist", tmp_path)


def test_truncated_file_is_named(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataError, match="train-images-idx3-ubyte is truncated"):
        load_dataset("fashion-mnist", tmp_path)


def test_truncated_gzip_is_named(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path, gz=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
        load_dataset("fashion-mnist", tmp_path)


def test_wrong_magic_count_mismatch_and_label_range(tmp_path: Path) -> None:
    images = np.zeros((4, 28, 28), np.uint8)
    with pytest.raises(DataError, match="magic"):
        parse_idx(idx_bytes(images), "x", LABELS_MAGIC)
    with pytest.raises(DataError, match="longer than its header"):
        parse_idx(idx_bytes(images) + b"\0", "x", IMAGES_MAGIC)
    write_fashion_mnist(tmp_path, gz=False)
    (tmp_path / FMNIST_FILES["train"][1]).write_bytes(idx_bytes(np.zeros(7, np.uint8)))
    with pytest.raises(DataError, match="100 images but .* 7 labels"):
        load_dataset("fashion-mnist", tmp_path)
    (tmp_path / FMNIST_FILES["train"][1]).write_bytes(idx_bytes(np.full(100, 10, np.uint8)))
    with pytest.raises(DataError, match="label 10 outside 0..9"):
        load_dataset("fashion-mnist", tmp_path)


def test_huge_header_is_refused_before_allocating() -> None:
    header = bytes([0, 0, 8, 3]) + np.array([2**31, 2**31, 2**31], dtype=">u4").tobytes()
    for data in (header + b"\0" * 10, gzip.compress(header)):
        with pytest.raises(DataError, match="header promises"):
            parse_idx(data, "x", IMAGES_MAGIC)


@pytest.mark.skipif(not DEFAULT_DIR.is_dir(), reason=f"Fashion-MNIST is not installed at {DEFAULT_DIR}")
def test_real_fashion_mnist() -> None:
    start = time.perf_counter()
    splits = load_dataset("fashion-mnist")
    assert time.perf_counter() - start < 20
    assert len(splits.train) + len(splits.calib) == 60000 and len(splits.test) == 10000
    assert (len(splits.train), len(splits.calib)) == (54000, 6000)
    assert splits.train.images.shape == (54000, 1, 28, 28) and splits.train.images.is_contiguous()
    counts = np.bincount(splits.calib.labels.numpy(), minlength=10)
    assert (counts == 600).all()
    pooled = torch.cat([splits.train.images, splits.calib.images]).float() / 255
    assert abs(pooled.mean().item() - splits.info.mean[0]) < 1e-3
    assert abs(pooled.std().item() - splits.info.std[0]) < 1e-3
