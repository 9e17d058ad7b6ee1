"""Streamed image folders: files decoded per batch by a `torch.utils.data.DataLoader`, for data that does not fit.

Choices (what a user of the usual recipes expects at each resolution):
- the evaluation view (`eval_view`): PIL `ImageOps.fit`, bilinear, to the model's size, keeping the central
  `crop_fraction` of the shorter side, i.e. the shorter side scaled to round(size / crop_fraction) and the centre
  cropped to size (0.875: the ImageNet evaluation of torchvision and timm, 256 -> 224). Default 0.875 from
  `LARGE_IMAGE` px up, else 1 (the whole shorter side, as the in-memory path decodes and CIFAR-style recipes use).
- train-time augmentation (`transforms.v2`) from `LARGE_IMAGE` px up: `RandomResizedCrop(size, scale=(0.08, 1),
  ratio=(3/4, 4/3))` of the original image + horizontal flip (the ImageNet recipe); below: the evaluation view
  zero-padded by `DatasetInfo.crop_padding` and randomly cropped back + flip, as the in-memory `crop_flip`.
- randomness: every augmented sample is drawn with its own seed, taken from the caller's generator, so batches do
  not depend on `num_workers` or on which worker decodes which sample; the global RNG is never touched.
- workers hand over uint8 images, normalised on the device (pinned memory and non-blocking copies on CUDA).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from dynacnn.data.splits import Subsets
from dynacnn.errors import DataError

LARGE_IMAGE = 96
"""From this size (the shorter side of the model's input) up, streams use the ImageNet recipe (see above)."""
LARGE_CROP_FRACTION = 0.875
RESIZED_CROP_SCALE = (0.08, 1.0)
MAX_WORKERS = 8
READ_BATCH = 64
"""Images per worker batch when reading a range of images (`StreamSplit.read_images`)."""
NO_SEED = -1
"""The seed of a sample that is not augmented (its evaluation view)."""


def available_memory() -> int:
    """Bytes this process may still allocate: /proc/meminfo's MemAvailable (else free pages), within a cgroup v2
    memory limit."""
    try:
        with open("/proc/meminfo") as handle:
            free = next(int(line.split()[1]) * 1024 for line in handle if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            free = 1 << 62
    try:
        with open("/sys/fs/cgroup/memory.max") as limit, open("/sys/fs/cgroup/memory.current") as current:
            cap = limit.read().strip()
            if cap != "max":
                free = min(free, int(cap) - int(current.read()))
    except (OSError, ValueError):
        pass
    return max(free, 0)


def default_workers() -> int:
    """DataLoader workers when none are given: one per usable CPU, at most `MAX_WORKERS`."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(MAX_WORKERS, cpus)


def default_crop_fraction(size: tuple[int, int]) -> float:
    """0.875 (ImageNet evaluation) for a model input of `LARGE_IMAGE` px and up, else 1 (the whole image)."""
    return LARGE_CROP_FRACTION if min(size) >= LARGE_IMAGE else 1.0


def eval_view(image: Image.Image, size: tuple[int, int], crop_fraction: float = 1.0) -> Image.Image:
    """The (width, height) = `size` view of `image`: its central `crop_fraction` of the shorter side (aspect kept),
    scaled bilinearly (PIL `ImageOps.fit` with bleed); the image itself when it already is that view."""
    if image.size == tuple(size) and crop_fraction == 1:
        return image
    return ImageOps.fit(image, tuple(size), method=Image.Resampling.BILINEAR, bleed=(1 - crop_fraction) / 2)


@dataclass(frozen=True)
class StreamFormat:
    """How the files of a stream become uint8 tensors (C, H, W): colour mode, size, views and augmentation."""

    mode: str
    size: tuple[int, int]
    """(height, width) of the model's input."""
    crop_fraction: float
    augment: str
    padding: int

    def view(self, image: Image.Image) -> torch.Tensor:
        """The evaluation view as a uint8 tensor."""
        height, width = self.size
        return v2.functional.pil_to_tensor(eval_view(image, (width, height), self.crop_fraction))

    def augmentation(self) -> v2.Compose:
        """The train-time transform (PIL image -> uint8 tensor); see the module docstring."""
        flip = [v2.RandomHorizontalFlip()] if self.augment == "crop_flip" else []
        if self.augment == "none":
            return v2.Compose([self.view])
        if min(self.size) >= LARGE_IMAGE:
            crop = v2.RandomResizedCrop(self.size, scale=RESIZED_CROP_SCALE, antialias=True)
            return v2.Compose([crop, *flip, v2.PILToTensor()])
        return v2.Compose([self.view, v2.RandomCrop(self.size, padding=self.padding, fill=0), *flip])


class ImageFiles(Dataset):
    """Image files decoded on demand: item (position, seed) -> the evaluation view (seed `NO_SEED`) or a seeded
    augmentation, as a uint8 tensor."""

    def __init__(self, paths: np.ndarray, fmt: StreamFormat) -> None:
        self.paths = paths
        """File names as bytes (a numpy array: no per-item Python objects for workers to copy on write)."""
        self.fmt = fmt
        self.augment = fmt.augmentation()

    def __len__(self) -> int:
        return len(self.paths)

    def take(self, positions: np.ndarray) -> ImageFiles:
        return ImageFiles(self.paths[positions], self.fmt)

    def __getitem__(self, item: tuple[int, int]) -> torch.Tensor:
        position, seed = item
        path = os.fsdecode(self.paths[position])
        try:
            with Image.open(path) as image:
                image = image.convert(self.fmt.mode)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot decode {path} ({exc}); replace or remove the file") from None
        if seed == NO_SEED:
            return self.fmt.view(image)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.augment(image)


class _Plan:
    """Batches of (position, seed) items for the DataLoader's `batch_sampler`, made as they are asked for."""

    def __init__(self, positions: torch.Tensor, seeds: torch.Tensor, batch_size: int) -> None:
        self.positions, self.seeds, self.batch_size = positions.tolist(), seeds.tolist(), batch_size

    def __len__(self) -> int:
        return -(-len(self.positions) // self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for start in range(0, len(self.positions), self.batch_size):
            stop = start + self.batch_size
            yield list(zip(self.positions[start:stop], self.seeds[start:stop]))


def _one_line(exc: DataError) -> DataError:
    """A DataError raised in a worker, which the DataLoader wraps in its traceback, as its own one-line message."""
    return DataError(re.split(r"DataError: ", str(exc).strip())[-1].splitlines()[0])


@dataclass
class StreamSplit(Subsets):
    """A split whose images are decoded from files per batch; labels and source indices in memory."""

    files: ImageFiles
    labels: torch.Tensor
    indices: torch.Tensor
    num_workers: int = 0

    def __post_init__(self) -> None:
        """Refuse tensors of the wrong type or of different lengths."""
        if self.labels.dtype != torch.int64 or self.indices.dtype != torch.int64:
            raise DataError("StreamSplit.labels and StreamSplit.indices must be int64 tensors")
        if not len(self.files) == len(self.labels) == len(self.indices):
            raise DataError("StreamSplit files, labels and indices must have the same length")

    @property
    def images(self) -> torch.Tensor:
        """Not held in memory: a clear error for code written for in-memory splits."""
        raise DataError(
            "this split is streamed from image files and holds no images in memory; use split.read_images(start, "
            "stop) or dynacnn.data.batches(split, ...), or load the data without stream=True"
        )

    def take(self, positions: np.ndarray | torch.Tensor) -> StreamSplit:
        """The samples at `positions` (positions in this split, not source indices)."""
        positions = torch.as_tensor(positions, dtype=torch.int64)
        files = self.files.take(positions.numpy())
        return StreamSplit(files, self.labels[positions], self.indices[positions], self.num_workers)

    def uint8_batches(
        self, order: torch.Tensor, batch_size: int, seeds: torch.Tensor | None = None, pin_memory: bool = False
    ) -> Iterator[torch.Tensor]:
        """uint8 image batches of the samples at `order`, in that order; sample i augmented with `seeds[i]`
        (`NO_SEED` or no `seeds`: its evaluation view)."""
        seeds = torch.full_like(order, NO_SEED) if seeds is None else seeds
        plan = _Plan(order, seeds, batch_size)
        loader = DataLoader(
            self.files,
            batch_sampler=plan,
            num_workers=min(self.num_workers, len(plan)),
            collate_fn=torch.stack,
            pin_memory=pin_memory,
            generator=torch.Generator().manual_seed(0),  # the loader's own draw; the global RNG stays untouched
        )
        try:
            yield from loader
        except DataError as exc:
            raise _one_line(exc) from None

    def read_images(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """uint8 evaluation views (n, C, H, W) of samples start..stop-1."""
        order = torch.arange(len(self))[start:stop]
        height, width = self.files.fmt.size
        channels = 1 if self.files.fmt.mode == "L" else 3
        parts = list(self.uint8_batches(order, READ_BATCH))
        return torch.cat(parts) if parts else torch.empty((0, channels, height, width), dtype=torch.uint8)

    def pixel_statistics(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std of the evaluation views' pixels / 255 (accumulated in float64)."""
        total = squares = None
        for images in self.uint8_batches(torch.arange(len(self)), READ_BATCH):
            pixels = images.double().div_(255).transpose(0, 1).flatten(1)
            total = pixels.sum(1) if total is None else total + pixels.sum(1)
            squares = pixels.square().sum(1) if squares is None else squares + pixels.square().sum(1)
        count = len(self) * self.files.fmt.size[0] * self.files.fmt.size[1]
        mean = total / count
        std = (squares / count - mean.square()).clamp_min(0).sqrt()
        return tuple(mean.tolist()), tuple(std.tolist())
