"""CIFAR pickles: both layouts, the restricted unpickler, corrupt and malicious files."""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
from _data_writers import dump, py2_pickle, write_cifar10, write_cifar100

from dynacnn.data import load_dataset
from dynacnn.data.cifar import unpickle
from dynacnn.errors import DataError


class Evil:
    """Pickles as a call to os.system that touches a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class Calls:
    """Pickles as an arbitrary call `func(*args)`."""

    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


class HugeArray:
    """Pickles as numpy's array reconstruction with a state that claims 10**12 elements but holds 3 bytes."""

    def __reduce__(self):
        reconstruct = np.ndarray((0,)).__reduce__()[0]
        return (reconstruct, (np.ndarray, (0,), b"b"), (1, (10**12,), np.dtype("u1"), False, b"abc"))


def test_python2_pickles_match_the_standard_unpickler() -> None:
    batch = {b"labels": [3, 1, 4], b"data": np.arange(3 * 3072).reshape(3, 3072).astype(np.uint8), b"x": b"y" * 300}
    data = py2_pickle(batch)
    assert b"numpy.core.multiarray\n_reconstruct" in data and b"_codecs" not in data
    ours, reference = unpickle(data, "x"), pickle.loads(data, encoding="bytes")
    assert ours.keys() == reference.keys() and ours[b"labels"] == reference[b"labels"] == [3, 1, 4]
    assert np.array_equal(ours[b"data"], reference[b"data"]) and ours[b"data"].flags.writeable


@pytest.mark.parametrize("protocol", ["py2", 3, 4])
def test_cifar10_from_folder_or_parent(tmp_path: Path, protocol: int | str) -> None:
    root = write_cifar10(tmp_path, per_batch=20, test_count=20, protocol=protocol)
    for data_dir in (tmp_path, root):
        splits = load_dataset("cifar10", data_dir)
        info = splits.info
        assert info.class_names[:2] == ["airplane", "automobile"] and info.num_classes == 10
        assert (info.input_shape, info.augment, info.crop_padding) == ((3, 32, 32), "crop_flip", 4)
        assert info.mean == (0.4914, 0.4822, 0.4465)
        assert (len(splits.train), len(splits.calib), len(splits.test)) == (90, 10, 20)
        for split in (splits.train, splits.calib, splits.test):
            assert np.array_equal(split.images[:, 0, 0, 0].numpy(), split.labels.numpy())


def test_cifar100_exposes_coarse_labels(tmp_path: Path) -> None:
    write_cifar100(tmp_path)
    splits = load_dataset("cifar100", tmp_path, calib_fraction=0.2)
    assert splits.info.class_names == ["apple", "pear", "bee", "beetle", "bus", "train"]
    assert splits.info.coarse_labels == [0, 0, 1, 1, 2, 2]
    assert splits.info.coarse_names == ["fruit", "insects", "vehicles"]
    assert (len(splits.train), len(splits.calib), len(splits.test)) == (48, 12, 24)
    assert np.array_equal(splits.test.images[:, 0, 0, 0].numpy(), splits.test.labels.numpy())


def test_missing_directory_and_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        load_dataset("cifar10", tmp_path / "nowhere")
    root = write_cifar10(tmp_path)
    (root / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3"):
        load_dataset("cifar10", tmp_path)


def test_truncated_batch_is_named(tmp_path: Path) -> None:
    root = write_cifar10(tmp_path)
    path = root / "data_batch_2"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="data_batch_2"):
        load_dataset("cifar10", tmp_path)


@pytest.mark.parametrize(
    "batch, message",
    [
        ([1, 2, 3], "not a CIFAR dict"),
        ({b"labels": [0]}, "no 'data' entry"),
        ({b"labels": [0, 1], b"data": np.zeros((2, 3072), np.float32)}, "not a uint8 array"),
        ({b"labels": [0], b"data": np.zeros((2, 3072), np.uint8)}, "2 images but 1"),
        ({b"labels": [0, 10], b"data": np.zeros((2, 3072), np.uint8)}, "outside 0..9"),
        ({b"labels": ["a", "b"], b"data": np.zeros((2, 3072), np.uint8)}, "not a list of integers"),
    ],
)
def test_malformed_batches(tmp_path: Path, batch: object, message: str) -> None:
    root = write_cifar10(tmp_path)
    dump(root / "data_batch_4", batch)
    with pytest.raises(DataError, match=message):
        load_dataset("cifar10", tmp_path)


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_malicious_pickle_never_runs(tmp_path: Path, protocol: int) -> None:
    root = write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    dump(root / "data_batch_1", {"data": Evil(marker), "labels": []}, protocol=protocol)
    with pytest.raises(DataError, match=r"data_batch_1 .*forbidden global (posix|os|nt)\.system"):
        load_dataset("cifar10", tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "obj, message",
    [
        (Calls(np.ndarray, (10**12,)), "not callable"),  # numpy.ndarray may not be called directly
        (HugeArray(), "does not match its 3 bytes"),  # a shape is checked against the bytes it comes with
        (np.array([1, "a"], dtype=object), "array state is not"),  # object arrays could hold anything
        (np.zeros(2, dtype=[("a", "u1")]), "not a plain numeric dtype"),
        (Calls(np.load, "x.npy"), "forbidden global numpy.load"),
        (Calls(eval, "1 + 1"), "forbidden global builtins.eval"),
    ],
)
def test_unpickler_refuses_everything_but_plain_arrays(obj: object, message: str) -> None:
    with pytest.raises(DataError, match=message):
        unpickle(pickle.dumps({b"data": obj}, protocol=4), "x")


def test_protocol5_arrays_are_refused() -> None:
    with pytest.raises(DataError, match="forbidden global numpy._core.numeric._frombuffer"):
        unpickle(pickle.dumps(np.zeros(3, np.uint8), protocol=5), "x")


def test_unpickler_rebuilds_numpy_arrays_with_both_module_spellings() -> None:
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    data = pickle.dumps({b"data": array}, protocol=3)  # GLOBAL opcodes name the module as text
    assert b"numpy._core.multiarray\n_reconstruct" in data
    for module in (b"numpy._core.multiarray", b"numpy.core.multiarray"):
        spelled = data.replace(b"numpy._core.multiarray", module)
        assert np.array_equal(unpickle(spelled, "x")[b"data"], array)


def test_huge_memo_index_is_refused() -> None:
    data = b"\x80\x02N" + b"r" + (2**32 - 1).to_bytes(4, "little") + b"."  # LONG_BINPUT 4294967295
    with pytest.raises(DataError, match="memo index"):
        unpickle(data, "x")


def test_odd_protocol0_string_is_a_data_error_not_a_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DataError, match="not a valid CIFAR pickle"):
            unpickle(b"S'\\c'\n.", "x")  # STRING opcode with an invalid escape
