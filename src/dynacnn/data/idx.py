"""Fashion-MNIST from IDX files (gzipped or plain), parsed with numpy and checked against the header."""

from __future__ import annotations

import gzip
import io
import zlib
from pathlib import Path

import numpy as np

from dynacnn.data.files import find_file, read_bytes, require_dir
from dynacnn.data.splits import DatasetInfo
from dynacnn.errors import DataError

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
GZIP_MAGIC = b"\x1f\x8b"
MAX_GZIP_RATIO = 1100  # deflate cannot expand data more than ~1032 times

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
INSTALL_FIX = "install it with `apt-get install dataset-fashion-mnist`, or pass --data-dir"
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
# Measured on the 60,000 training images.
MEAN, STD = (0.2860,), (0.3530,)


def _read(stream: io.IOBase, n: int, source: str) -> bytes:
    """Exactly `n` bytes from `stream`, else a DataError saying `source` is truncated or corrupt."""
    try:
        data = stream.read(n)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{source} is not a valid gzip file ({exc}); re-download it") from None
    if len(data) != n:
        raise DataError(f"{source} is truncated (expected {n} more bytes, got {len(data)}); re-download it")
    return data


def parse_idx(data: bytes, source: str, magic: int) -> np.ndarray:
    """Decode an unsigned-byte IDX file (`data`, gzipped or not) whose magic number must be `magic`."""
    gzipped = data[:2] == GZIP_MAGIC
    stream = gzip.GzipFile(fileobj=io.BytesIO(data)) if gzipped else io.BytesIO(data)
    found = int.from_bytes(_read(stream, 4, source), "big")
    if found != magic:
        raise DataError(
            f"{source} is not an IDX file of this kind (magic {found:#010x}, expected {magic:#010x}); re-download it or point --data-dir at the right files"
        )
    ndim = magic & 0xFF
    dims = tuple(int(d) for d in np.frombuffer(_read(stream, 4 * ndim, source), dtype=">u4"))
    size = int(np.prod(dims, dtype=object))
    bound = len(data) * (MAX_GZIP_RATIO if gzipped else 1)
    if size > bound:
        raise DataError(
            f"{source} is truncated: its header promises {size} bytes of data {dims} but it is too short; re-download it"
        )
    body = _read(stream, size, source)
    if _read_rest(stream, source):
        raise DataError(f"{source} is longer than its header {dims} says; re-download it")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims).copy()


def _read_rest(stream: io.IOBase, source: str) -> bool:
    """Whether `stream` has any byte left."""
    try:
        return bool(stream.read(1))
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{source} is not a valid gzip file ({exc}); re-download it") from None


def read_pair(images_path: Path, labels_path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 1, H, W) and labels (N,) from an IDX image file and its label file, cross-checked."""
    images = parse_idx(read_bytes(images_path), str(images_path), IMAGES_MAGIC)
    labels = parse_idx(read_bytes(labels_path), str(labels_path), LABELS_MAGIC).astype(np.int64)
    if len(images) == 0 or min(images.shape) == 0:
        raise DataError(f"{images_path} holds no images {images.shape}; re-download it")
    if len(images) != len(labels):
        raise DataError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels")
    if labels.max() >= num_classes:
        raise DataError(f"{labels_path} has label {labels.max()} outside 0..{num_classes - 1}; re-download it")
    return images[:, None], labels


def load_fashion_mnist(data_dir: Path | None) -> tuple[DatasetInfo, tuple, tuple]:
    """Fashion-MNIST: info, (train images, labels, indices), (test images, labels, indices)."""
    root = require_dir(data_dir or DEFAULT_DIR, "fashion-mnist", INSTALL_FIX)
    parts = []
    for prefix in ("train", "t10k"):
        paths = [
            find_file(root, (f"{prefix}-{kind}", f"{prefix}-{kind}.gz"), INSTALL_FIX)
            for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")
        ]
        images, labels = read_pair(*paths, num_classes=len(CLASS_NAMES))
        parts.append((images, labels, np.arange(len(labels))))
    shape = parts[0][0].shape[1:]
    if parts[1][0].shape[1:] != shape:
        raise DataError(f"fashion-mnist in {root}: train images are {shape} but test images {parts[1][0].shape[1:]}")
    info = DatasetInfo("fashion-mnist", list(CLASS_NAMES), shape, MEAN, STD, "crop_flip", 2)
    return info, parts[0], parts[1]
