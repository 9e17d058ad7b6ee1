"""Offline datasets, seeded stratified train / calibration / test splits, batching in memory or streamed.

`load_dataset(name, data_dir, calib_fraction=0.1, seed=0, **options)` decodes a dataset once into
uint8 tensors (or, for an image folder with `stream=True`, lists its files to decode per batch) and holds out a
stratified calibration split of the training files. Options accepted by every dataset: `train_limit`,
`test_limit` (stratified subsets, for quick demos); `image_size` (pixels of the square model input: image folders
are decoded at it, the synthetic set generated at it, the others resized, see `adjust.py`); `mean`, `std` (one
value per channel: the normalisation the model was trained with, instead of the dataset's). Per dataset:
`imagefolder`: `stream` (False: decode into memory; True: `stream.StreamSplit`s read by a DataLoader),
`num_workers` (streams; default one per CPU, at most 8), `crop_fraction` (of the shorter side kept by the
evaluation view; see stream.py); `synthetic`: `num_classes`, `num_groups`, `group_sizes`, `channels`,
`samples_per_class`, `test_samples_per_class`, `data_seed`, `noise`. `digits` and `synthetic` ignore `data_dir`.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from dynacnn.data.adjust import check_image_size, check_mean_std, with_image_size, with_normalisation
from dynacnn.data.batching import batches, normalize
from dynacnn.data.cifar import load_cifar
from dynacnn.data.digits import load_digits
from dynacnn.data.idx import load_fashion_mnist
from dynacnn.data.imagefolder import load_imagefolder
from dynacnn.data.splits import DatasetInfo, DatasetSplits, Split, check_split_options, make_splits
from dynacnn.data.stream import StreamSplit
from dynacnn.data.synthetic import load_synthetic
from dynacnn.errors import ConfigError

DATASETS = ("fashion-mnist", "cifar10", "cifar100", "imagefolder", "digits", "synthetic")

_COMMON_OPTIONS = ("train_limit", "test_limit", "image_size", "mean", "std")
_OPTIONS = {
    "imagefolder": ("stream", "num_workers", "crop_fraction"),
    "synthetic": tuple(name for name in inspect.signature(load_synthetic).parameters if name != "image_size"),
}


def _load(name: str, data_dir: Path | None, options: dict[str, Any], image_size: int | None, normalisation) -> tuple:
    """Run the loader of dataset `name` at `image_size`: (info, train, test) as arrays (or streamed splits)."""
    if name == "imagefolder":
        return load_imagefolder(data_dir, image_size, **options, mean=normalisation[0], std=normalisation[1])
    if name == "synthetic":
        return load_synthetic(**options, **({} if image_size is None else {"image_size": image_size}))
    if name == "fashion-mnist":
        info, train, test = load_fashion_mnist(data_dir)
    elif name in ("cifar10", "cifar100"):
        info, train, test = load_cifar(name, data_dir)
    else:
        info, train, test = load_digits()
    return (info, train, test) if image_size is None else with_image_size(info, train, test, image_size)


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
    limits = {key: options.pop(key, None) for key in ("train_limit", "test_limit")}
    check_split_options(calib_fraction, seed, **limits)
    normalisation = check_mean_std(options.pop("mean", None), options.pop("std", None))
    image_size = check_image_size(options.pop("image_size", None))
    info, train, test = _load(name, None if data_dir is None else Path(data_dir), options, image_size, normalisation)
    info = with_normalisation(info, *normalisation)
    return make_splits(info, train, test, calib_fraction=calib_fraction, seed=seed, **limits)


__all__ = [
    "DATASETS",
    "DatasetInfo",
    "DatasetSplits",
    "Split",
    "StreamSplit",
    "batches",
    "load_dataset",
    "normalize",
]
