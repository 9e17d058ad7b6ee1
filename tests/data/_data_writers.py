"""Writers of tiny datasets in the real on-disk formats, for the data tests."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image

FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte IDX file holding `array`."""
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def labelled_images(rng: np.random.Generator, per_class: int, classes: int, shape: tuple[int, ...]):
    """Random uint8 images of `shape` whose first pixel encodes the label; labels in shuffled order."""
    labels = rng.permutation(np.repeat(np.arange(classes), per_class)).astype(np.uint8)
    images = rng.integers(0, 256, size=(len(labels), *shape), dtype=np.uint8)
    images.reshape(len(labels), -1)[:, 0] = labels
    return images, labels


def write_fashion_mnist(root: Path, per_class: int = 10, test_per_class: int = 3, gz: bool = True, seed: int = 0):
    """Tiny Fashion-MNIST IDX files (28x28, 10 classes) in `root`; returns {split: (images, labels)}."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, count in (("train", per_class), ("test", test_per_class)):
        images, labels = labelled_images(rng, count, 10, (28, 28))
        for name, array in zip(FMNIST_FILES[split], (images, labels)):
            data = idx_bytes(array)
            if gz:
                (root / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (root / name).write_bytes(data)
        written[split] = (images, labels)
    return written


def write_cifar10(
    parent: Path, per_batch: int = 20, test_count: int = 20, seed: int = 0, protocol: int | str = 4
) -> Path:
    """Tiny `cifar-10-batches-py` under `parent` (bytes keys, numpy data); returns the folder."""
    rng = np.random.default_rng(seed)
    root = parent / "cifar-10-batches-py"
    root.mkdir(parents=True)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    meta = {b"label_names": names, b"num_cases_per_batch": per_batch, b"num_vis": 3072}
    dump(root / "batches.meta", meta, protocol)
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in files:
        count = test_count if name == "test_batch" else per_batch
        labels = rng.permutation(np.arange(count) % 10).tolist()
        data = rng.integers(0, 256, size=(count, 3072), dtype=np.uint8)
        data[:, 0] = labels
        batch = {
            b"batch_label": name.encode(),
            b"labels": labels,
            b"data": data,
            b"filenames": [f"img_{i}.png".encode() for i in range(count)],
        }
        dump(root / name, batch, protocol)
    return root


def write_cifar100(parent: Path, train_count: int = 60, test_count: int = 24, seed: int = 0) -> Path:
    """Tiny `cifar-100-python` (6 fine classes in 3 coarse classes) under `parent`; returns the folder."""
    rng = np.random.default_rng(seed)
    root = parent / "cifar-100-python"
    root.mkdir(parents=True)
    fine_names = [b"apple", b"pear", b"bee", b"beetle", b"bus", b"train"]
    coarse_of_fine = [0, 0, 1, 1, 2, 2]
    dump(root / "meta", {b"fine_label_names": fine_names, b"coarse_label_names": [b"fruit", b"insects", b"vehicles"]})
    for name, count in (("train", train_count), ("test", test_count)):
        fine = rng.permutation(np.arange(count) % 6).tolist()
        data = rng.integers(0, 256, size=(count, 3072), dtype=np.uint8)
        data[:, 0] = fine
        dump(
            root / name,
            {
                b"filenames": [b"x.png"] * count,
                b"batch_label": name.encode(),
                b"fine_labels": fine,
                b"coarse_labels": [coarse_of_fine[f] for f in fine],
                b"data": data,
            },
        )
    return root


def dump(path: Path, obj: object, protocol: int | str = 4) -> None:
    """Pickle `obj` to `path`; protocol "py2" writes it as Python 2's cPickle wrote the CIFAR files."""
    path.write_bytes(py2_pickle(obj) if protocol == "py2" else pickle.dumps(obj, protocol=protocol))


def _string(data: bytes) -> bytes:
    """A Python 2 str opcode (SHORT_BINSTRING or BINSTRING)."""
    return b"U" + bytes([len(data)]) + data if len(data) < 256 else b"T" + struct.pack("<I", len(data)) + data


def _int(n: int) -> bytes:
    """A BININT opcode."""
    return b"J" + struct.pack("<i", n)


def py2_pickle(batch: dict) -> bytes:
    """Protocol-2 pickle of a dict (bytes keys; uint8 arrays, int / bytes lists, ints, bytes) as Python 2 wrote it."""
    out = [b"\x80\x02}("]
    for key, value in batch.items():
        out.append(_string(key))
        if isinstance(value, np.ndarray):
            out.append(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + _int(0) + b"\x85" + _string(b"b"))
            out.append(b"\x87R(" + _int(1) + b"(" + b"".join(_int(n) for n in value.shape) + b"t")
            out.append(b"cnumpy\ndtype\n" + _string(b"u1") + _int(0) + _int(1) + b"\x87R")
            out.append(b"(" + _int(3) + _string(b"|") + b"NNN" + _int(-1) + _int(-1) + _int(0) + b"tb")
            out.append(b"\x89" + _string(value.astype(np.uint8).tobytes()) + b"tb")
        elif isinstance(value, list):
            out.append(b"](" + b"".join(_int(v) if isinstance(v, int) else _string(v) for v in value) + b"e")
        elif isinstance(value, int):
            out.append(_int(value))
        else:
            out.append(_string(value))
    return b"".join(out) + b"u."


def write_png(path: Path, size: tuple[int, int], mode: str = "RGB", value: int = 0) -> None:
    """A PNG of `size` (width, height) filled with a gradient offset by `value`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    ramp = (np.add.outer(np.arange(height), np.arange(width)) * 7 + value) % 256
    pixels = np.stack([ramp, (ramp + 85) % 256, (ramp + 170) % 256], axis=-1) if mode == "RGB" else ramp
    Image.fromarray(pixels.astype(np.uint8)).save(path)


def write_image_folder(
    root: Path,
    classes=("cat", "dog", "owl"),
    train_per_class: int = 6,
    test_per_class: int = 2,
    size=(12, 12),
    mode: str = "RGB",
    test_dir: str = "test",
) -> Path:
    """`root/train/<class>/*.png` and `root/<test_dir>/<class>/*.png`; returns `root`."""
    for split, count in (("train", train_per_class), (test_dir, test_per_class)):
        for label, name in enumerate(classes):
            for i in range(count):
                write_png(root / split / name / f"{i:03d}.png", size, mode, value=40 * label + i)
    return root
