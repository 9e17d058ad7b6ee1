"""An image folder: `root/train/<class>/*` and `root/test/<class>/*` (or `root/val/`), loaded with PIL.

Choices:
- classes are the sorted subfolder names of `train/`; `test/` (or `val/`) must have the same ones;
- a file PIL cannot identify as an image (or any other non-folder / non-file entry) is skipped with a
  `warnings.warn` naming it, so stray files such as `.DS_Store` or `labels.csv` do not stop a run;
  a class folder left with no image is a DataError;
- images are kept single-channel ("L") when every image is grayscale ("1", "L", "LA"), else converted
  to RGB (alpha dropped, palettes expanded);
- all images must have one size; the `image_size` option instead scales each image so that its shorter
  side is `image_size` and centre-crops it to `image_size` x `image_size` (PIL `ImageOps.fit`, bilinear);
- `indices` number the readable images of a split in (class, file name) order;
- mean / std are measured on the images of `train/` (calibration included); augment is "crop_flip"
  with padding H // 8 (at least 1).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from dynacnn.data.files import require_dir
from dynacnn.data.splits import DatasetInfo
from dynacnn.errors import ConfigError, DataError

GRAY_MODES = {"1", "L", "LA"}
FIX = "pass --data-dir pointing at a folder holding train/ and test/ (or val/) folders of class folders"


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


def _scan(class_dirs: dict[str, Path]) -> list[tuple[Path, int, tuple[int, int], str]]:
    """(path, label, size, mode) of every readable image, in (class, file name) order."""
    found = []
    for label, folder in enumerate(class_dirs.values()):
        count = len(found)
        for path in sorted(folder.iterdir()):
            try:
                with Image.open(path) as image:
                    found.append((path, label, image.size, image.mode))
            except Image.DecompressionBombError as exc:
                raise DataError(f"{path} is too large to decode safely ({exc}); remove or shrink it") from None
            except OSError:  # includes UnidentifiedImageError and directories
                warnings.warn(f"skipping {path}: not an image file PIL can read", stacklevel=4)
        if len(found) == count:
            raise DataError(f"class folder {folder} holds no image; add images or remove the folder")
    return found


def _decode(items: list, mode: str, image_size: int | None, shape: tuple[int, int, int]) -> np.ndarray:
    """Decode `items` into a uint8 array of `shape` per image."""
    out = np.empty((len(items), *shape), dtype=np.uint8)
    for i, (path, *_) in enumerate(items):
        try:
            with Image.open(path) as image:
                image = image.convert(mode)
                if image_size is not None:
                    image = ImageOps.fit(image, (image_size, image_size), method=Image.Resampling.BILINEAR)
                pixels = np.asarray(image, dtype=np.uint8)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot decode {path} ({exc}); replace or remove the file") from None
        out[i] = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    return out


def load_imagefolder(data_dir: Path | None, image_size: int | None = None) -> tuple[DatasetInfo, tuple, tuple]:
    """Image folder: info, (train images, labels, indices), (test images, labels, indices)."""
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise ConfigError(f"image_size {image_size!r} must be a positive integer (pixels) or None")
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
        width, height = first[2]
    else:
        width = height = image_size
    shape = (1 if mode == "L" else 3, height, width)
    parts = []
    for items in (train_items, test_items):
        labels = np.array([item[1] for item in items], dtype=np.int64)
        parts.append((_decode(items, mode, image_size, shape), labels, np.arange(len(items))))
    scaled = parts[0][0].astype(np.float32) / 255
    mean = tuple(float(m) for m in scaled.mean(axis=(0, 2, 3)))
    std = tuple(max(float(s), 1 / 255) for s in scaled.std(axis=(0, 2, 3)))
    info = DatasetInfo("imagefolder", list(train_classes), shape, mean, std, "crop_flip", max(1, height // 8))
    return info, parts[0], parts[1]
