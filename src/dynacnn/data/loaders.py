"""Sources of training and evaluation batches for `dynacnn.train.fit`: images of a split, or precomputed tensors."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from dynacnn.data.batching import batches


class Batches(Protocol):
    """A re-iterable source of (inputs, labels) batches; randomness only from the given generator."""

    num_samples: int

    def __call__(
        self, generator: torch.Generator | None, device: torch.device
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


@dataclass
class ImageBatches:
    """Batches of normalised images from a `dynacnn.data.Split`, optionally shuffled and augmented."""

    split: Any
    info: Any
    batch_size: int = 256
    shuffle: bool = False
    augment: bool = False

    @property
    def num_samples(self) -> int:
        return len(self.split)

    def __call__(
        self, generator: torch.Generator | None, device: torch.device
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return batches(
            self.split,
            self.info,
            self.batch_size,
            shuffle=self.shuffle,
            augment=self.augment,
            generator=generator,
            device=device,
        )


@dataclass
class TensorBatches:
    """Batches of precomputed tensors (e.g. cached shared-layer features) and labels."""

    inputs: torch.Tensor
    labels: torch.Tensor
    batch_size: int = 256
    shuffle: bool = False

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    def __call__(
        self, generator: torch.Generator | None, device: torch.device
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        for start in range(0, n, self.batch_size):
            index = order[start : start + self.batch_size]
            yield self.inputs[index].to(device, non_blocking=True), self.labels[index].to(device, non_blocking=True)
