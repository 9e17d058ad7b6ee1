"""Mini-batches of any split: shuffling, random crop / flip on uint8, normalisation on the device.

In-memory splits are cropped and flipped per batch with one gather; streamed splits (`stream.StreamSplit`) are
decoded and augmented by DataLoader workers, each sample with its own seed drawn from the same generator.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from dynacnn.data.splits import DatasetInfo, Split
from dynacnn.data.stream import NO_SEED, StreamSplit
from dynacnn.errors import ConfigError

DEFAULT_SEED = 0


def normalize(images: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    """uint8 (B, C, H, W) on any device -> float32 `(x / 255 - mean) / std`, on the same device."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != len(info.mean):
        raise ConfigError(
            f"normalize expects uint8 images (B, {len(info.mean)}, H, W), got {images.dtype} {tuple(images.shape)}"
        )
    mean = torch.tensor(info.mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(info.std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    return images.float().div_(255).sub_(mean).div_(std)


def crop_flip(images: torch.Tensor, padding: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Per-sample random crop of the zero-padded batch and, if `flip`, random horizontal flip (one gather)."""
    batch, channels, height, width = images.shape
    padded = torch.zeros(
        (batch, channels, height + 2 * padding, width + 2 * padding), dtype=images.dtype, device=images.device
    )
    padded[:, :, padding : padding + height, padding : padding + width] = images
    top, left = torch.randint(0, 2 * padding + 1, (2, batch, 1), generator=generator)
    cols = torch.arange(width).expand(batch, width)
    if flip:
        flipped = torch.randint(0, 2, (batch, 1), generator=generator, dtype=torch.bool)
        cols = torch.where(flipped, width - 1 - cols, cols)
    rows = top + torch.arange(height)
    index = (rows[:, :, None] * padded.shape[3] + (left + cols)[:, None, :]).to(images.device)
    flat = padded.view(batch, channels, -1)
    return flat.gather(2, index.view(batch, 1, -1).expand(batch, channels, -1)).view(images.shape)


def _check_augment(augment: bool | float) -> float:
    """`augment` as the probability that a sample is augmented."""
    if isinstance(augment, bool):
        return float(augment)
    if not isinstance(augment, (int, float)) or not 0 <= augment <= 1:
        raise ConfigError(f"augment {augment!r} must be True, False or a probability in [0, 1]")
    return float(augment)


def _stream_batches(
    split: StreamSplit,
    info: DatasetInfo,
    order: torch.Tensor,
    batch_size: int,
    augment: float,
    generator: torch.Generator,
    device: torch.device,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of a streamed split: each augmented sample gets a seed of its own from `generator`."""
    seeds = None
    if augment > 0 and info.augment != "none":
        seeds = torch.randint(0, 2**62, (len(order),), generator=generator)
        if augment < 1:
            seeds[torch.rand(len(order), generator=generator) >= augment] = NO_SEED
    images = split.uint8_batches(order, batch_size, seeds, pin_memory=device.type == "cuda")
    for start, chunk in zip(range(0, len(order), batch_size), images):
        labels = split.labels[order[start : start + batch_size]]
        yield normalize(chunk.to(device, non_blocking=True), info), labels.to(device, non_blocking=True)


def batches(
    split: Split | StreamSplit,
    info: DatasetInfo,
    batch_size: int,
    *,
    shuffle: bool = False,
    augment: bool | float = False,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (normalised float32 images, int64 labels) on `device`; randomness comes only from `generator`.

    Without a generator, a fresh one seeded with 0 is used, so every call then repeats the same order.
    Augmentation (info.augment) is drawn on the CPU; in memory it is applied per batch on uint8 images, in a stream
    per sample by the workers. `augment` may be a probability: each sample is augmented with it, else kept clean.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size {batch_size!r} must be a positive integer")
    probability = _check_augment(augment)
    if generator is None:
        generator = torch.Generator().manual_seed(DEFAULT_SEED)
    if generator.device.type != "cpu":
        raise ConfigError(f"batches needs a CPU torch.Generator, got one on {generator.device}")
    order = torch.randperm(len(split), generator=generator) if shuffle else torch.arange(len(split))
    if isinstance(split, StreamSplit):
        yield from _stream_batches(split, info, order, batch_size, probability, generator, torch.device(device))
        return
    mode = info.augment if probability > 0 else "none"
    for start in range(0, len(split), batch_size):
        chosen = order[start : start + batch_size]
        images = split.images[chosen]
        if mode != "none":
            augmented = crop_flip(images, info.crop_padding, mode == "crop_flip", generator)
            if probability < 1:
                keep = torch.rand(len(chosen), generator=generator) < probability
                augmented = torch.where(keep.view(-1, 1, 1, 1), augmented, images)
            images = augmented
        yield normalize(images.to(device, non_blocking=True), info), split.labels[chosen].to(device)
