"""CIFAR-10 / CIFAR-100 python pickles, read with an unpickler that can only rebuild numpy arrays.

The files are pickles by definition. Before unpickling, every opcode is scanned (`pickletools`) so
that a corrupt file cannot make the unpickler allocate without bound. While unpickling, every global
is refused except the three that numpy's array pickles name (`numpy.core.multiarray._reconstruct`,
also spelled `numpy._core...`, `numpy.ndarray`, `numpy.dtype`), and even those resolve to stand-ins:
untrusted state never reaches numpy's own `__setstate__`; an array is rebuilt with `np.frombuffer`
from its raw bytes, and only for plain numeric dtypes.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from dynacnn.data.files import find_file, read_bytes, require_dir
from dynacnn.data.splits import DatasetInfo
from dynacnn.errors import DataError

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
LAYOUTS = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", "batches.meta"),
    "cifar100": ("cifar-100-python", ["train"], "test", "meta"),
}
# Published per-channel statistics of the training images.
STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
PIXELS = 3 * 32 * 32
_MEMO_OPS = {"PUT", "BINPUT", "LONG_BINPUT"}


def _ascii(value: Any) -> str:
    """A str from a short str or bytes value found in a pickle."""
    if isinstance(value, bytes):
        value = value.decode("ascii")
    if not isinstance(value, str) or len(value) > 8:
        raise pickle.UnpicklingError(f"unexpected dtype field {value!r}")
    return value


class _NdarrayToken:
    """Stands for `numpy.ndarray`: usable only as the first argument of `_reconstruct`, never called."""


_NDARRAY = _NdarrayToken()


class _DtypeStub:
    """Stands for `numpy.dtype(code, ...)`; resolves to a plain numeric dtype only."""

    def __init__(self, code: Any, *_: Any) -> None:
        self.code, self.endian = code, "|"

    def __setstate__(self, state: Any) -> None:
        """Keep only the byte order of numpy's dtype state."""
        self.endian = state[1]

    def resolve(self) -> np.dtype:
        """The numpy dtype, refusing anything but bool / int / uint / float scalars."""
        code, endian = _ascii(self.code), _ascii(self.endian)
        if not re.fullmatch(r"[iu][1248]|f[248]|b1", code) or endian not in ("<", ">", "|", "="):
            raise pickle.UnpicklingError(f"dtype {code!r} {endian!r} is not a plain numeric dtype")
        dtype = np.dtype(code)
        return dtype.newbyteorder(endian) if endian in "<>" else dtype


class _ArrayStub:
    """Stands for `_reconstruct(numpy.ndarray, ...)`; its pickled state becomes `self.array`."""

    def __init__(self, cls: Any, *_: Any) -> None:
        if cls is not _NDARRAY:
            raise pickle.UnpicklingError("_reconstruct may only build numpy.ndarray")
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        """Build the array from (version, shape, dtype, is_fortran, raw bytes)."""
        shape, dtype, fortran, raw = state[-4:]
        if not isinstance(dtype, _DtypeStub) or not isinstance(raw, bytes) or not isinstance(shape, tuple):
            raise pickle.UnpicklingError("array state is not (shape, dtype, is_fortran, bytes)")
        if not all(isinstance(n, int) and n >= 0 for n in shape):
            raise pickle.UnpicklingError(f"bad array shape {shape!r}")
        dtype = dtype.resolve()
        if int(np.prod(shape, dtype=object)) * dtype.itemsize != len(raw):
            raise pickle.UnpicklingError(f"array of shape {shape} does not match its {len(raw)} bytes")
        self.array = np.frombuffer(raw, dtype).reshape(shape, order="F" if fortran else "C").copy()


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose only globals are the stand-ins for numpy's array reconstruction."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _ArrayStub,
        ("numpy._core.multiarray", "_reconstruct"): _ArrayStub,
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy", "dtype"): _DtypeStub,
    }

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data), encoding="bytes")

    def find_class(self, module: str, name: str) -> Any:
        """The stand-in for `module.name`, else an error."""
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"forbidden global {module}.{name}") from None


def _prescan(data: bytes) -> None:
    """Walk the opcodes without executing them; refuse malformed streams and absurd memo indices."""
    count = 0
    for opcode, arg, _ in pickletools.genops(data):
        count += 1
        if opcode.name in _MEMO_OPS and not 0 <= int(arg) <= len(data):
            raise pickle.UnpicklingError(f"memo index {arg} out of range")
    if count == 0:
        raise pickle.UnpicklingError("empty pickle")


def _array_or_value(value: Any) -> Any:
    """The numpy array a stand-in stands for, or `value` itself."""
    if isinstance(value, _ArrayStub):
        if value.array is None:
            raise pickle.UnpicklingError("array without state")
        return value.array
    return value


def unpickle(data: bytes, source: str) -> Any:
    """Unpickle `data` restricted to builtin values and (top-level, in a dict) numeric numpy arrays."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # e.g. odd escapes in protocol-0 strings: a bad file
            _prescan(data)
            obj = _array_or_value(RestrictedUnpickler(data).load())
        return {key: _array_or_value(value) for key, value in obj.items()} if isinstance(obj, dict) else obj
    except Exception as exc:  # untrusted bytes: any failure of the unpickler means a bad file
        reason = f"{type(exc).__name__}: {exc}"[:200]
        raise DataError(f"{source} is not a valid CIFAR pickle ({reason}); re-download it") from None


def _text(value: Any, source: str) -> str:
    """A str from a bytes or str value."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        return value
    raise DataError(f"{source} holds a name that is not text ({type(value).__name__}); re-download it")


def parse_dict(data: bytes, source: str) -> dict[str, Any]:
    """The dict in a CIFAR pickle, with str keys."""
    obj = unpickle(data, source)
    if not isinstance(obj, dict):
        raise DataError(f"{source} holds a {type(obj).__name__}, not a CIFAR dict; re-download it")
    return {_text(key, source): value for key, value in obj.items()}


def _field(batch: dict[str, Any], key: str, source: str) -> Any:
    """`batch[key]`, else a DataError naming the file and the key."""
    if key not in batch:
        raise DataError(f"{source} has no {key!r} entry; it is not a CIFAR file of this kind")
    return batch[key]


def _labels(batch: dict[str, Any], key: str, count: int, num_classes: int, source: str) -> np.ndarray:
    """Integer labels `batch[key]`, checked for length and range."""
    values = _field(batch, key, source)
    if not isinstance(values, list) or not all(isinstance(v, int) for v in values):
        raise DataError(f"{source}: {key!r} is not a list of integers; re-download it")
    if len(values) != count:
        raise DataError(f"{source} has {count} images but {len(values)} {key!r}; re-download it")
    if count and not (0 <= min(values) and max(values) < num_classes):
        raise DataError(f"{source}: {key!r} has values outside 0..{num_classes - 1}; re-download it")
    return np.asarray(values, dtype=np.int64)


def parse_batch(
    data: bytes, source: str, label_keys: list[str], num_classes: list[int]
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Images (N, 3, 32, 32) and the labels under each of `label_keys` from one CIFAR batch file."""
    batch = parse_dict(data, source)
    pixels = _field(batch, "data", source)
    if not (isinstance(pixels, np.ndarray) and pixels.dtype == np.uint8 and pixels.shape[1:] == (PIXELS,)):
        raise DataError(f"{source}: 'data' is not a uint8 array of shape (N, {PIXELS}); re-download it")
    labels = [_labels(batch, key, len(pixels), k, source) for key, k in zip(label_keys, num_classes)]
    return pixels.reshape(-1, 3, 32, 32), labels


def _names(meta: dict[str, Any], key: str, source: str) -> list[str]:
    """The list of class names `meta[key]`."""
    names = _field(meta, key, source)
    if not isinstance(names, list) or not names:
        raise DataError(f"{source}: {key!r} is not a non-empty list of names; re-download it")
    return [_text(name, source) for name in names]


def _find_root(name: str, data_dir: Path | None) -> Path:
    """The CIFAR directory: `data_dir` itself or its standard subdirectory."""
    folder = LAYOUTS[name][0]
    fix = f"download the python version from {CIFAR_URL} and pass --data-dir (the {folder} folder or its parent)"
    given = data_dir or Path("/usr/share/datasets") / name
    root = given / folder if (given / folder).is_dir() else given
    return require_dir(root, name, fix)


def _coarse_of_fine(fine: np.ndarray, coarse: np.ndarray, num_fine: int, path: Path) -> list[int]:
    """The coarse label of every fine class, which must be the same for all its samples."""
    mapping = np.full(num_fine, -1)
    mapping[fine] = coarse
    if (mapping[fine] != coarse).any() or (mapping < 0).any():
        raise DataError(f"{path}: fine and coarse labels do not nest (or a fine class is missing); re-download it")
    return mapping.tolist()


def load_cifar(name: str, data_dir: Path | None) -> tuple[DatasetInfo, tuple, tuple]:
    """CIFAR-10 or CIFAR-100: info, (train images, labels, indices), (test images, labels, indices)."""
    _, train_files, test_file, meta_file = LAYOUTS[name]
    root = _find_root(name, data_dir)
    fix = f"download the python version from {CIFAR_URL} and pass --data-dir"
    paths = [find_file(root, (f,), fix) for f in (*train_files, test_file, meta_file)]
    meta_source = str(paths[-1])
    meta = parse_dict(read_bytes(paths[-1]), meta_source)
    coarse_labels = coarse_names = None
    if name == "cifar10":
        class_names, keys = _names(meta, "label_names", meta_source), ["labels"]
        sizes = [len(class_names)]
    else:
        class_names, keys = _names(meta, "fine_label_names", meta_source), ["fine_labels", "coarse_labels"]
        coarse_names = _names(meta, "coarse_label_names", meta_source)
        sizes = [len(class_names), len(coarse_names)]
    batches = [parse_batch(read_bytes(path), str(path), keys, sizes) for path in paths[:-1]]
    train_images = np.concatenate([images for images, _ in batches[:-1]])
    train_labels = np.concatenate([labels[0] for _, labels in batches[:-1]])
    test_images, (test_labels, *_) = batches[-1]
    if len(train_labels) == 0 or len(test_labels) == 0:
        raise DataError(f"{root} holds no training or no test images; re-download it")
    if name == "cifar100":
        coarse_labels = _coarse_of_fine(train_labels, batches[0][1][1], len(class_names), paths[0])
    mean, std = STATS[name]
    info = DatasetInfo(name, class_names, (3, 32, 32), mean, std, "crop_flip", 4, coarse_labels, coarse_names)
    return (
        info,
        (train_images, train_labels, np.arange(len(train_labels))),
        (
            test_images,
            test_labels,
            np.arange(len(test_labels)),
        ),
    )
