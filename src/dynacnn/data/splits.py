"""Dataset containers and seeded, stratified train / calibration / test splits.

A split is either a `Split` (uint8 images in memory) or a streamed split (`dynacnn.data.stream.StreamSplit`,
images decoded from files per batch); both have `labels`, `indices`, `len()`, `take`, `subset` and `read_images`,
and `dynacnn.data.batches` serves both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dynacnn.errors import ConfigError, DataError

AUGMENTS = ("crop_flip", "crop", "none")


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset: classes, input shape, normalisation, augmentation."""

    name: str
    class_names: list[str]
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str
    crop_padding: int
    coarse_labels: list[int] | None = None
    coarse_names: list[str] | None = None

    def __post_init__(self) -> None:
        """Refuse an inconsistent description."""
        channels = self.input_shape[0]
        if len(self.mean) != channels or len(self.std) != channels or min(self.std) <= 0:
            raise DataError(f"{self.name}: mean/std must have {channels} positive entries")
        if self.augment not in AUGMENTS:
            raise ConfigError(f"{self.name}: augment {self.augment!r} is not one of {AUGMENTS}")
        if self.coarse_labels is not None and len(self.coarse_labels) != len(self.class_names):
            raise DataError(f"{self.name}: coarse_labels needs one entry per class")

    @property
    def num_classes(self) -> int:
        """Number of (fine) classes."""
        return len(self.class_names)


class Subsets:
    """`len()` and `subset` for any split with `labels` and `take(positions)`."""

    labels: torch.Tensor

    def __len__(self) -> int:
        """Number of samples."""
        return len(self.labels)

    def subset(self, n: int, seed: int = 0) -> Subsets:
        """Stratified random subset of `n` samples, deterministic for `seed`; the whole split if n >= len."""
        if not is_int(n) or n < 1:
            raise ConfigError(f"subset size {n!r} must be a positive integer")
        if n >= len(self):
            return self
        present = int(torch.unique(self.labels).numel())
        if n < present:
            raise ConfigError(f"subset size {n} is smaller than the {present} classes present; use n >= {present}")
        return self.take(stratified_sample(self.labels.numpy(), n, seed))


@dataclass
class Split(Subsets):
    """Images (uint8 N,C,H,W) in memory, labels (int64) and each sample's index in its source set."""

    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor

    def __post_init__(self) -> None:
        """Refuse tensors of the wrong type or of different lengths."""
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError("Split.images must be a uint8 tensor of shape (N, C, H, W)")
        if self.labels.dtype != torch.int64 or self.indices.dtype != torch.int64:
            raise DataError("Split.labels and Split.indices must be int64 tensors")
        if not len(self.images) == len(self.labels) == len(self.indices):
            raise DataError("Split.images, labels and indices must have the same length")

    def take(self, positions: np.ndarray | torch.Tensor) -> Split:
        """The samples at `positions` (positions in this split, not source indices)."""
        positions = torch.as_tensor(positions, dtype=torch.int64)
        return Split(self.images[positions].contiguous(), self.labels[positions], self.indices[positions])

    def read_images(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """uint8 images (n, C, H, W) of samples start..stop-1 (a view)."""
        return self.images[start:stop]


@dataclass
class DatasetSplits:
    """A dataset's description and its three disjoint splits."""

    info: DatasetInfo
    train: Any
    calib: Any
    test: Any
    """`Split`s, or `StreamSplit`s for a streamed image folder."""

    def split_indices(self) -> dict[str, list[int]]:
        """Source indices of every split, for saving with a run."""
        return {name: getattr(self, name).indices.tolist() for name in ("train", "calib", "test")}


def _allocate(counts: np.ndarray, n: int) -> np.ndarray:
    """Split `n` over classes in proportion to `counts` (largest remainder), every class once if n allows."""
    quota = counts * (n / counts.sum())
    take = np.floor(quota).astype(np.int64)
    order = np.argsort(-(quota - take), kind="stable")
    take[order[: n - take.sum()]] += 1
    if n >= len(counts):
        while (take == 0).any():
            take[np.argmax(take)] -= 1
            take[np.argmin(take)] += 1
    return take


def stratified_sample(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted positions of `n` samples drawn per class in proportion to class frequency."""
    rng = np.random.default_rng(seed)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    chosen = [rng.permutation(np.flatnonzero(inverse == c))[:k] for c, k in enumerate(_allocate(counts, n))]
    return np.sort(np.concatenate(chosen))


def _as_split(images: np.ndarray, labels: np.ndarray, indices: np.ndarray) -> Split:
    """Wrap numpy arrays as a contiguous CPU Split."""
    return Split(
        torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)),
        torch.from_numpy(np.asarray(labels, dtype=np.int64)),
        torch.from_numpy(np.asarray(indices, dtype=np.int64)),
    )


def is_int(value: object) -> bool:
    """Whether `value` is an integer (and not a bool)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_split_options(calib_fraction: float, seed: int, train_limit: int | None, test_limit: int | None) -> None:
    """Refuse a calibration fraction outside (0, 0.5], a negative seed and limits that are not positive integers."""
    if not (isinstance(calib_fraction, (int, float)) and not isinstance(calib_fraction, bool)) or not (
        0 < calib_fraction <= 0.5
    ):
        raise ConfigError(f"calib_fraction {calib_fraction!r} must be in (0, 0.5]; e.g. 0.1")
    if not is_int(seed) or seed < 0:
        raise ConfigError(f"seed {seed!r} must be a non-negative integer")
    for option, value in (("train_limit", train_limit), ("test_limit", test_limit)):
        if value is not None and (not is_int(value) or value < 1):
            raise ConfigError(f"{option} {value!r} must be a positive integer or None")


def calibration_positions(labels: np.ndarray, calib_fraction: float, seed: int, name: str) -> tuple:
    """(train positions, calibration positions): a stratified hold-out of round(calib_fraction * N) samples."""
    n_calib = max(1, round(calib_fraction * len(labels)))
    if n_calib >= len(labels):
        raise DataError(f"{name}: {len(labels)} training samples are too few to hold out a calibration split")
    calib_pos = stratified_sample(labels, n_calib, seed)
    return np.setdiff1d(np.arange(len(labels)), calib_pos, assume_unique=True), calib_pos


def make_splits(
    info: DatasetInfo,
    train: tuple[np.ndarray, np.ndarray, np.ndarray] | Subsets,
    test: tuple[np.ndarray, np.ndarray, np.ndarray] | Subsets,
    *,
    calib_fraction: float,
    seed: int,
    train_limit: int | None = None,
    test_limit: int | None = None,
) -> DatasetSplits:
    """Hold out a stratified calibration split from `train` (images, labels, source indices, or a split of any
    kind), then apply limits; in-memory and streamed sources of the same labels give the same membership."""
    train = _as_split(*train) if isinstance(train, tuple) else train
    test = _as_split(*test) if isinstance(test, tuple) else test
    train_pos, calib_pos = calibration_positions(train.labels.numpy(), calib_fraction, seed, info.name)
    train_split, calib_split = train.take(train_pos), train.take(calib_pos)
    if train_limit is not None:
        train_split = train_split.subset(train_limit, seed)
    if test_limit is not None:
        test = test.subset(test_limit, seed)
    return DatasetSplits(info, train_split, calib_split, test)
