"""S's outputs cached once per split, and batches of them for training heads and the clustifier with S frozen (§3.1)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dynacnn.cpcnn.compress import build_head
from dynacnn.data import batches, normalize
from dynacnn.models.layout import as_format, memory_format_of


@dataclass
class FeatureBatches:
    """Batches of cached S outputs (copies, N, ...): each sample comes from one of its copies, drawn at random.

    With `teacher` (copies, N, C) logits, inputs are (features, teacher logits) pairs for `Distilled`.
    Feature maps come in `memory_format` (the trained module's).
    """

    features: torch.Tensor
    labels: torch.Tensor
    teacher: torch.Tensor | None = None
    batch_size: int = 128
    shuffle: bool = True
    memory_format: torch.memory_format = torch.contiguous_format

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    def __call__(self, generator: torch.Generator | None, device: torch.device):
        n, copies = len(self.labels), self.features.shape[0]
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        for start in range(0, n, self.batch_size):
            index = order[start : start + self.batch_size]
            if copies > 1:
                copy = torch.randint(copies, (len(index),), generator=generator)
            else:
                copy = torch.zeros_like(index)
            inputs = as_format(self.features[copy, index].to(device), self.memory_format)
            if self.teacher is not None:
                inputs = (inputs, self.teacher[copy, index].to(device))
            yield inputs, self.labels[index].to(device)


@dataclass
class CachedSplit:
    """S's outputs for one split of the data, with labels and (for distillation) the backbone's logits."""

    features: torch.Tensor
    labels: torch.Tensor
    teacher: torch.Tensor | None = None


@torch.inference_mode()
def batched_outputs(module: nn.Module, inputs: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """module(inputs) in eval mode, batched, on the inputs' device, inputs in the module's memory format."""
    module.eval()
    fmt = memory_format_of(module)
    return torch.cat([module(as_format(inputs[i : i + batch_size], fmt)) for i in range(0, len(inputs), batch_size)])


def softmax_outputs(module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """Softmax of `batched_outputs`, on the CPU in float64 (what every policy evaluation takes)."""
    return torch.softmax(batched_outputs(module, inputs).cpu().double(), dim=1)


@torch.inference_mode()
def image_outputs(
    module: nn.Module,
    split: Any,
    info: Any,
    device: torch.device,
    *,
    augment: bool = False,
    seed: int = 0,
    batch_size: int = 512,
) -> torch.Tensor:
    """module(normalised images of `split`), in the split's order, optionally with one seeded augmentation."""
    module.eval()
    fmt = memory_format_of(module)
    generator = torch.Generator().manual_seed(seed)
    parts = batches(split, info, batch_size, augment=augment, generator=generator, device=device)
    return torch.cat([module(as_format(x, fmt)).cpu() for x, _ in parts])


def class_probs(backbone: nn.Module, split: Any, info: Any, device: torch.device) -> torch.Tensor:
    """Softmax outputs (N, K) of the backbone on a split."""
    return torch.softmax(image_outputs(backbone, split, info, device).float(), dim=1)


def cache_split(
    shared: nn.Module,
    data: Any,
    split_name: str,
    device: torch.device,
    copies: int = 1,
    seed: int = 0,
    limit: int | None = None,
) -> CachedSplit:
    """S's outputs for one split: (copies, N, ...) for training (copy 0 clean), else (N, ...)."""
    split = getattr(data, split_name)
    if limit is not None:
        split = split.subset(limit, seed)
    clean = image_outputs(shared, split, data.info, device)
    if split_name != "train":
        return CachedSplit(clean, split.labels)
    copies = copies if data.info.augment != "none" else 1
    augmented = [image_outputs(shared, split, data.info, device, augment=True, seed=seed + c) for c in range(1, copies)]
    return CachedSplit(torch.stack([clean, *augmented]), split.labels)


def backbone_logits(
    backbone: nn.Module, split: str, features: torch.Tensor, input_shape: Sequence[int]
) -> torch.Tensor:
    """The backbone's logits computed from cached S outputs (copies, N, ...) by its own later stages."""
    num_classes = backbone.fc.out_features
    tail = build_head(backbone, split, "L0", num_classes, input_shape, list(range(num_classes))).to(features.device)
    tail.to(memory_format=memory_format_of(backbone))
    return torch.stack([batched_outputs(tail, copy) for copy in features])


def normalised_images(
    split: Any,
    info: Any,
    device: torch.device,
    limit: int | None,
    seed: int,
    start: int = 0,
    stop: int | None = None,
) -> torch.Tensor:
    """Normalised float images of `split[start:stop]` (or a stratified subset of `limit` images)."""
    if limit is not None:
        split = split.subset(limit, seed)
    return normalize(split.images[start:stop].to(device), info).contiguous()
