"""Offline datasets, seeded stratified train / calibration / test splits, in-memory batching.

`load_dataset(name, data_dir, calib_fraction=0.1, seed=0, **options)` decodes a dataset once into
uint8 tensors and holds out a stratified calibration split of the training files. Options accepted by
every dataset: `train_limit`, `test_limit` (stratified subsets, for quick demos). Per dataset:
`imagefolder`: `image_size`; `synthetic`: `num_classes`, `num_groups`, `group_sizes`, `image_size`,
`channels`, `samples_per_class`, `test_samples_per_class`, `data_seed`, `noise`. `digits` and
`synthetic` ignore `data_dir`.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from dynacnn.data.batching import batches, normalize
from dynacnn.data.cifar import load_cifar
from dynacnn.data.digits import load_digits
from dynacnn.data.idx import load_fashion_mnist
from dynacnn.data.imagefolder import load_imagefolder
from dynacnn.data.splits import DatasetInfo, DatasetSplits, Split, check_split_options, make_splits
from dynacnn.data.synthetic import load_synthetic
from dynacnn.errors import ConfigError

DATASETS = ("fashion-mnist", "cifar10", "cifar100", "imagefolder", "digits", "synthetic")

_COMMON_OPTIONS = ("train_limit", "test_limit")
_OPTIONS = {"imagefolder": ("image_size",), "synthetic": tuple(inspect.signature(load_synthetic).parameters)}


def _load(name: str, data_dir: Path | None, options: dict[str, Any]) -> tuple:
    """Run the loader of dataset `name`: (info, train arrays, test arrays)."""
    if name == "fashion-mnist":
        return load_fashion_mnist(data_dir)
    if name in ("cifar10", "cifar100"):
        return load_cifar(name, data_dir)
    if name == "imagefolder":
        return load_imagefolder(data_dir, **options)
    if name == "digits":
        return load_digits()
    return load_synthetic(**options)


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    *,
    calib_fraction: float = 0.1,
    seed: int = 0,
    **options: Any,
) -> DatasetSplits:
    """Load dataset `name` and split it into train / calib (seeded, stratified hold-out) / test."""
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    accepted = (*_OPTIONS.get(name, ()), *_COMMON_OPTIONS)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(f"dataset {name!r} has no option {', '.join(unknown)}; valid options: {', '.join(accepted)}")
    limits = {key: options.pop(key, None) for key in _COMMON_OPTIONS}
    check_split_options(calib_fraction, seed, **limits)
    info, train, test = _load(name, None if data_dir is None else Path(data_dir), options)
    return make_splits(info, train, test, calib_fraction=calib_fraction, seed=seed, **limits)


__all__ = ["DATASETS", "DatasetInfo", "DatasetSplits", "Split", "batches", "load_dataset", "normalize"]
