"""An image folder: `root/train/<class>/*` and `root/test/<class>/*` (or `root/val/`), loaded with PIL.

Choices:
- classes are the sorted subfolder names of `train/`; `test/` (or `val/`) must have the same ones;
- a file PIL cannot identify as an image (or any other non-folder / non-file entry) is skipped with a
  `warnings.warn` naming it, so stray files such as `.DS_Store` or `labels.csv` do not stop a run;
  a class folder left with no image is a DataError; every file's header is read once (by a thread pool for large
  folders, with a progress bar), whether the images are then decoded into memory or streamed;
- images are kept single-channel ("L") when every image is grayscale ("1", "L", "LA"), else converted
  to RGB (alpha dropped, palettes expanded);
- all images must have one size; the `image_size` option instead gives every image the `image_size` x
  `image_size` view of `stream.eval_view` (the central `crop_fraction` of the shorter side, PIL `ImageOps.fit`,
  bilinear; in memory `crop_fraction` defaults to 1: the shorter side scaled to `image_size`, centre-cropped);
- `indices` number the readable images of a split in (class, file name) order;
- mean / std are measured on the images of `train/` (calibration included); augment is "crop_flip"
  with padding H // 8 (at least 1).
- `stream=True`: the same files (so the same split membership for a seed) decoded per batch instead of once into
  memory (`stream.StreamSplit`, see stream.py for its views and augmentation); mean / std, unless given, are
  measured on a fixed stratified subset of `STAT_IMAGES` training images (all of them if fewer).
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from dynacnn.data.adjust import check_image_size, with_normalisation
from dynacnn.data.files import require_dir
from dynacnn.data.splits import DatasetInfo, is_int
from dynacnn.data.stream import (
    ImageFiles,
    StreamFormat,
    StreamSplit,
    available_memory,
    default_crop_fraction,
    default_workers,
    eval_view,
)
from dynacnn.errors import ConfigError, DataError

GRAY_MODES = {"1", "L", "LA"}
FIX = "pass --data-dir pointing at a folder holding train/ and test/ (or val/) folders of class folders"
SCAN_THREADS = 16
PARALLEL_SCAN = 2000
"""Folders with more files than this have their headers read by `SCAN_THREADS` threads."""
STAT_IMAGES = 1000
"""A stream's mean / std come from this many training images (a fixed stratified subset; at least one per class)."""


def _class_dirs(split_dir: Path) -> dict[str, Path]:
    """Class name -> folder, for the subfolders of `split_dir`; other entries are skipped with a warning."""
    classes = {}
    for entry in sorted(split_dir.iterdir()):
        if entry.is_dir():
            classes[entry.name] = entry
        else:
            warnings.warn(f"skipping {entry}: not a class folder", stacklevel=4)
    if not classes:
        raise DataError(f"{split_dir} holds no class folders; {FIX}")
    return classes


def _probe(path: Path) -> tuple[tuple[int, int], str] | None:
    """(size, mode) from the file's header, or None if PIL cannot read it as an image."""
    try:
        with Image.open(path) as image:
            return image.size, image.mode
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path} is too large to decode safely ({exc}); remove or shrink it") from None
    except OSError:  # includes UnidentifiedImageError and directories
        return None


def _scan(class_dirs: dict[str, Path]) -> list[tuple[Path, int, tuple[int, int], str]]:
    """(path, label, size, mode) of every readable image, in (class, file name) order."""
    entries = [(path, label) for label, folder in enumerate(class_dirs.values()) for path in sorted(folder.iterdir())]
    paths = [path for path, _ in entries]
    desc = f"reading {next(iter(class_dirs.values())).parent.name}/ headers"
    if len(paths) > PARALLEL_SCAN:
        with ThreadPoolExecutor(SCAN_THREADS) as pool:
            probes = list(tqdm(pool.map(_probe, paths), total=len(paths), desc=desc, disable=None))
    else:
        probes = [_probe(path) for path in paths]
    found, per_class = [], np.zeros(len(class_dirs), dtype=np.int64)
    for (path, label), probe in zip(entries, probes):
        if probe is None:
            warnings.warn(f"skipping {path}: not an image file PIL can read", stacklevel=4)
            continue
        found.append((path, label, *probe))
        per_class[label] += 1
    for folder, count in zip(class_dirs.values(), per_class):
        if count == 0:
            raise DataError(f"class folder {folder} holds no image; add images or remove the folder")
    return found


def _decode(items: list, mode: str, size: tuple[int, int], crop_fraction: float) -> np.ndarray:
    """Decode `items` into a uint8 array (N, C, height, width) of their `eval_view`s, `size` = (height, width)."""
    out = np.empty((len(items), 1 if mode == "L" else 3, *size), dtype=np.uint8)
    for i, (path, *_) in enumerate(tqdm(items, desc="decoding images", leave=False, disable=None)):
        try:
            with Image.open(path) as image:
                pixels = np.asarray(eval_view(image.convert(mode), size[::-1], crop_fraction), dtype=np.uint8)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot decode {path} ({exc}); replace or remove the file") from None
        out[i] = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    return out


def _check_options(stream: object, num_workers: object, crop_fraction: object) -> None:
    """Refuse stream options of the wrong type or range."""
    if stream not in (True, False):
        raise ConfigError(f"stream {stream!r} must be True (read images from disk per batch) or False (decode once)")
    if num_workers is not None and (not stream or not is_int(num_workers) or num_workers < 0):
        raise ConfigError(f"num_workers {num_workers!r} must be a whole number >= 0 and needs stream=True")
    if crop_fraction is not None and (
        isinstance(crop_fraction, bool) or not isinstance(crop_fraction, (int, float)) or not 0 < crop_fraction <= 1
    ):
        raise ConfigError(f"crop_fraction {crop_fraction!r} must be in (0, 1], e.g. 0.875 (ImageNet evaluation)")


def _paths(items: list) -> np.ndarray:
    return np.array([str(item[0]).encode("utf-8", "surrogateescape") for item in items], dtype=np.bytes_)


def load_imagefolder(
    data_dir: Path | None,
    image_size: int | None = None,
    stream: bool = False,
    num_workers: int | None = None,
    crop_fraction: float | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> tuple[DatasetInfo, tuple | StreamSplit, tuple | StreamSplit]:
    """Image folder: info, then (images, labels, indices) arrays for train and test, or `StreamSplit`s when
    streaming; `mean` / `std` (checked) replace the measured ones."""
    check_image_size(image_size)
    _check_options(stream, num_workers, crop_fraction)
    if data_dir is None:
        raise DataError(f"imagefolder has no default location; {FIX}")
    root = require_dir(data_dir, "imagefolder", FIX)
    test_dir = root / "test" if (root / "test").is_dir() else root / "val"
    for folder in (root / "train", test_dir):
        if not folder.is_dir():
            raise DataError(f"missing folder {folder}; {FIX}")
    train_classes, test_classes = _class_dirs(root / "train"), _class_dirs(test_dir)
    if list(train_classes) != list(test_classes):
        odd = sorted(set(train_classes) ^ set(test_classes))
        raise DataError(f"{root / 'train'} and {test_dir} have different class folders (e.g. {odd[:3]}); match them")
    train_items, test_items = _scan(train_classes), _scan(test_classes)
    mode = "L" if all(item[3] in GRAY_MODES for item in train_items + test_items) else "RGB"
    if image_size is None:
        first = train_items[0]
        for item in train_items + test_items:
            if item[2] != first[2]:
                raise DataError(
                    f"{item[0]} is {item[2][0]}x{item[2][1]} but {first[0]} is {first[2][0]}x{first[2][1]}; "
                    "pass the image_size option (--image-size) to resize all images"
                )
        size = first[2][::-1]
    else:
        size = (image_size, image_size)
    shape = (1 if mode == "L" else 3, *size)
    placeholder = DatasetInfo(
        "imagefolder", list(train_classes), shape, (0.0,) * shape[0], (1.0,) * shape[0], "none", 0
    )
    with_normalisation(placeholder, mean, std)  # wrong lengths fail before any decoding
    labels = [torch.tensor([item[1] for item in items], dtype=torch.int64) for items in (train_items, test_items)]
    if stream:
        fmt = StreamFormat(mode, size, crop_fraction or default_crop_fraction(size), "crop_flip", max(1, size[0] // 8))
        workers = default_workers() if num_workers is None else num_workers
        train, test = (
            StreamSplit(ImageFiles(_paths(items), fmt), label, torch.arange(len(items)), workers)
            for items, label in zip((train_items, test_items), labels)
        )
        if mean is None or std is None:
            measured = train.subset(max(STAT_IMAGES, len(train_classes))).pixel_statistics()
            mean, std = mean or measured[0], std or tuple(max(s, 1 / 255) for s in measured[1])
        return DatasetInfo("imagefolder", list(train_classes), shape, mean, std, "crop_flip", fmt.padding), train, test
    needed = (len(train_items) + len(test_items)) * int(np.prod(shape))
    if needed > available_memory():
        raise DataError(
            f"decoding {len(train_items) + len(test_items)} images at {shape[1]}x{shape[2]} needs {needed / 2**30:.1f}"
            " GiB, more than the memory available; pass stream=True (--stream) to read them from disk per batch"
        )
    parts = []
    for items, label in zip((train_items, test_items), labels):
        parts.append((_decode(items, mode, size, crop_fraction or 1.0), label.numpy(), np.arange(len(items))))
    scaled = parts[0][0].astype(np.float32) / 255
    measured_mean = tuple(float(m) for m in scaled.mean(axis=(0, 2, 3)))
    measured_std = tuple(max(float(s), 1 / 255) for s in scaled.std(axis=(0, 2, 3)))
    padding = max(1, size[0] // 8)
    info = DatasetInfo(
        "imagefolder", list(train_classes), shape, mean or measured_mean, std or measured_std, "crop_flip", padding
    )
    return info, parts[0], parts[1]
