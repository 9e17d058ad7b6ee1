"""Options every dataset accepts: `mean` / `std` (the normalisation a model was trained with) and `image_size`.

`image_size` on an in-memory dataset other than an image folder (whose files are decoded at that size) and the
synthetic set (generated at it) resizes the decoded uint8 images: the shorter side scaled to `image_size` with
`torch.nn.functional.interpolate(mode="bilinear", antialias=True, align_corners=False)` on float pixels, rounded to
uint8, and the centre cropped square (the built-in sets are square, so this is a plain resize, e.g. Fashion-MNIST
28 -> 32). The crop padding scales with the size; mean and std stay the dataset's (resizing barely moves them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from dynacnn.data.splits import DatasetInfo, is_int
from dynacnn.errors import ConfigError

RESIZE_CHUNK = 1024
NORMALISATION_FIX = "pass one value per channel, e.g. --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 for RGB"


def check_mean_std(
    mean: float | Sequence[float] | None, std: float | Sequence[float] | None
) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """`mean` and `std` as tuples of floats (None stays None); refuses non-numbers and a std that is not positive."""
    values = []
    for name, given in (("--mean", mean), ("--std", std)):
        if given is None:
            values.append(None)
            continue
        entries = [given] if isinstance(given, (int, float)) else given
        if (
            isinstance(entries, (str, bytes))
            or not isinstance(entries, Sequence)
            or not entries
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in entries)
        ):
            raise ConfigError(f"{name} {given!r} must be finite numbers, one per channel; {NORMALISATION_FIX}")
        values.append(tuple(float(v) for v in entries))
    if values[1] is not None and min(values[1]) <= 0:
        raise ConfigError(f"--std {std!r} must be positive for every channel; {NORMALISATION_FIX}")
    return values[0], values[1]


def with_normalisation(info: DatasetInfo, mean: tuple[float, ...] | None, std: tuple[float, ...] | None) -> DatasetInfo:
    """`info` normalised with the given `mean` / `std` (checked by `check_mean_std`) instead of its own."""
    channels = info.input_shape[0]
    for name, values in (("--mean", mean), ("--std", std)):
        if values is not None and len(values) != channels:
            raise ConfigError(
                f"--mean/--std need {channels} value(s) each, one per channel of {info.name}, but {name} has "
                f"{len(values)}; {NORMALISATION_FIX}" + (" (one value for grayscale)" if channels == 1 else "")
            )
    return replace(info, mean=info.mean if mean is None else mean, std=info.std if std is None else std)


def check_image_size(image_size: object) -> int | None:
    """`image_size` if it is None or a positive whole number of pixels, else a ConfigError."""
    if image_size is not None and (not is_int(image_size) or image_size < 1):
        raise ConfigError(f"image_size {image_size!r} must be a positive integer (pixels) or None")
    return image_size


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, C, H, W) -> (N, C, size, size): shorter side to `size` (bilinear, antialiased), centre crop."""
    height, width = images.shape[2:]
    scale = size / min(height, width)
    scaled = (max(size, round(height * scale)), max(size, round(width * scale)))
    top, left = (scaled[0] - size) // 2, (scaled[1] - size) // 2
    out = np.empty((len(images), images.shape[1], size, size), dtype=np.uint8)
    for start in range(0, len(images), RESIZE_CHUNK):
        chunk = torch.from_numpy(np.ascontiguousarray(images[start : start + RESIZE_CHUNK])).float()
        resized = torch.nn.functional.interpolate(chunk, scaled, mode="bilinear", antialias=True, align_corners=False)
        pixels = resized[:, :, top : top + size, left : left + size].round_().clamp_(0, 255)
        out[start : start + RESIZE_CHUNK] = pixels.to(torch.uint8).numpy()
    return out


def with_image_size(info: DatasetInfo, train: tuple, test: tuple, size: int) -> tuple[DatasetInfo, tuple, tuple]:
    """The dataset resized to `size` x `size` (`resize_images`); crop padding scaled alike."""
    channels, height, width = info.input_shape
    if (height, width) == (size, size):
        return info, train, test
    padding = max(1, round(info.crop_padding * size / height)) if info.crop_padding else 0
    info = replace(info, input_shape=(channels, size, size), crop_padding=padding)
    return info, (resize_images(train[0], size), *train[1:]), (resize_images(test[0], size), *test[1:])
