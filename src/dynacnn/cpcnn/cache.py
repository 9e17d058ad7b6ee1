"""S's outputs for training heads and the clustifier with S frozen (§3.1): cached once per split, or recomputed
per batch from the images when they do not fit in the memory budget (`CPCNNConfig.feature_memory`).

`shared_outputs` plans each part (`plan_features`: train, then calibration, then test, each cached while the
budget lasts) and returns one source per part, a `CachedSplit` or a `RecomputedSplit`. Both give training batches
(`training_batches`: `FeatureBatches` of cached outputs, or `RecomputedBatches` that run S under `torch.no_grad` on
each batch of images, and the backbone's tail for the teacher's logits) and module outputs over the split
(`outputs`, `probs`: only the (N, outputs) results are kept). With augmentation off (`feature_copies` 1) the two give
the same batches in the same order, so the same trained components within float tolerance. With copies > 1 a cached
split holds fixed augmented copies; a recomputed one draws a fresh augmentation for the same share of samples.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dynacnn.cpcnn.compress import build_head
from dynacnn.cpcnn.model import TrivialHead
from dynacnn.data import batches, normalize
from dynacnn.models.layout import as_format, memory_format_of

PARTS = ("train", "calib", "test")
OUTPUT_BATCH = 512
"""Images per batch of S (and the modules after it) when computing outputs over a split, for inputs up to
`OUTPUT_PIXELS` pixels; larger images come in proportionally smaller batches (at least `MIN_OUTPUT_BATCH`), so that
a pass holds about as much activation memory at 224 px as at 32 px."""
OUTPUT_PIXELS = 32 * 32
MIN_OUTPUT_BATCH = 32


def output_batch(input_shape: Sequence[int]) -> int:
    """Images per batch of an output pass over inputs of `input_shape` (C, H, W)."""
    pixels = input_shape[-2] * input_shape[-1]
    return max(MIN_OUTPUT_BATCH, min(OUTPUT_BATCH, OUTPUT_BATCH * OUTPUT_PIXELS // pixels))


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


def _device_of(module: nn.Module, default: torch.device) -> torch.device:
    return next((p.device for p in module.parameters()), default)


@torch.inference_mode()
def batched_outputs(module: nn.Module, inputs: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """module(inputs) in eval mode, batched, on the module's device (each batch moved there, results left there),
    inputs in the module's memory format."""
    module.eval()
    fmt, device = memory_format_of(module), _device_of(module, inputs.device)
    return torch.cat(
        [module(as_format(inputs[i : i + batch_size].to(device), fmt)) for i in range(0, len(inputs), batch_size)]
    )


def softmax_outputs(module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """Softmax of `batched_outputs`, on the CPU in float64 (what every policy evaluation takes)."""
    return torch.softmax(batched_outputs(module, inputs).cpu().double(), dim=1)


def _probs(modules: Sequence[nn.Module], count: int, outputs: Callable[[list[nn.Module]], list[torch.Tensor]]):
    """Softmax (float64, CPU) of each module's outputs; a `TrivialHead`'s are ones, computed without a pass."""
    real = [m for m in modules if not isinstance(m, TrivialHead)]
    computed = iter(outputs(real) if real else [])
    ones = torch.ones(count, 1, dtype=torch.float64)
    return [ones if isinstance(m, TrivialHead) else torch.softmax(next(computed).double(), dim=1) for m in modules]


@torch.inference_mode()
def _fill(module: nn.Module, split: Any, info: Any, device: torch.device, out: torch.Tensor, **kwargs: Any) -> None:
    """out[i] = module(normalised image i of `split`), in the split's order (kwargs: `batches`' augment, generator)."""
    module.eval()
    fmt, start = memory_format_of(module), 0
    for x, _ in batches(split, info, output_batch(info.input_shape), device=device, **kwargs):
        result = module(as_format(x, fmt))
        out[start : start + len(result)] = result.to(out.device)
        start += len(result)


def image_outputs(
    module: nn.Module,
    split: Any,
    info: Any,
    device: torch.device,
    *,
    augment: bool = False,
    seed: int = 0,
    batch_size: int | None = None,
) -> torch.Tensor:
    """module(normalised images of `split`) on the CPU, in the split's order, optionally with one seeded augmentation
    (batches of `batch_size`, default `output_batch`)."""
    generator = torch.Generator().manual_seed(seed)
    batch_size = batch_size or output_batch(info.input_shape)
    parts = batches(split, info, batch_size, augment=augment, generator=generator, device=device)
    with torch.inference_mode():
        module.eval()
        fmt = memory_format_of(module)
        return torch.cat([module(as_format(x, fmt)).cpu() for x, _ in parts])


def class_probs(backbone: nn.Module, split: Any, info: Any, device: torch.device) -> torch.Tensor:
    """Softmax outputs (N, K) of the backbone on a split."""
    return torch.softmax(image_outputs(backbone, split, info, device).float(), dim=1)


@dataclass
class CachedSplit:
    """S's outputs for one split: (copies, N, ...) for training, else (N, ...); labels; for distillation the
    backbone's logits (copies, N, C)."""

    features: torch.Tensor
    labels: torch.Tensor
    teacher: torch.Tensor | None = None
    mode = "cache"

    @property
    def copies(self) -> int:
        """Copies per training sample (of a training split's features)."""
        return self.features.shape[0]

    @property
    def has_teacher(self) -> bool:
        return self.teacher is not None

    def training_batches(
        self,
        targets: torch.Tensor,
        teacher_fn: Callable[[torch.Tensor], torch.Tensor] | None,
        positions: torch.Tensor | None,
        batch_size: int,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> FeatureBatches:
        """Shuffled batches of the samples at `positions` (None: all), labels mapped by `targets` (class -> target),
        with `teacher_fn(teacher logits)` as the teacher when given."""
        index = slice(None) if positions is None else positions
        teacher = None if teacher_fn is None else teacher_fn(self.teacher[:, index])
        labels = targets[self.labels[index]]
        return FeatureBatches(self.features[:, index], labels, teacher, batch_size, memory_format=memory_format)

    def outputs(
        self, modules: Sequence[nn.Module], device: torch.device, positions: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """Each module's outputs (CPU) on the features at `positions` (None: all)."""
        features = self.features if positions is None else self.features[positions]
        return [batched_outputs(module, features).cpu() for module in modules]

    def probs(self, modules: Sequence[nn.Module], device: torch.device) -> list[torch.Tensor]:
        """Each module's softmax (float64, CPU) on all features."""
        return _probs(modules, len(self.labels), lambda real: self.outputs(real, device))

    def example(self, device: torch.device) -> torch.Tensor:
        """One feature map (1, ...) on `device`, e.g. for counting a head's MACs."""
        return self.features[:1].to(device)


@dataclass
class RecomputedSplit:
    """S's outputs for one split recomputed from its images per batch, S frozen: nothing of size N x features is
    kept. `tail` (the backbone after S) gives the teacher's logits; `copies` > 1 augments (copies-1)/copies of the
    training samples afresh in each epoch."""

    shared: nn.Module
    split: Any
    info: Any
    copies: int = 1
    tail: nn.Module | None = None
    mode = "recompute"

    @property
    def labels(self) -> torch.Tensor:
        return self.split.labels

    @property
    def has_teacher(self) -> bool:
        return self.tail is not None

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """S(images) in eval mode, without autograd (the result may feed a module being trained)."""
        self.shared.eval()
        with torch.no_grad():
            return self.shared(as_format(images, memory_format_of(self.shared)))

    def training_batches(
        self,
        targets: torch.Tensor,
        teacher_fn: Callable[[torch.Tensor], torch.Tensor] | None,
        positions: torch.Tensor | None,
        batch_size: int,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> RecomputedBatches:
        """As `CachedSplit.training_batches`, computing S (and the teacher) per batch."""
        split = self.split if positions is None else self.split.take(positions)
        return RecomputedBatches(self, split, targets, teacher_fn, batch_size, memory_format)

    @torch.inference_mode()
    def outputs(
        self, modules: Sequence[nn.Module], device: torch.device, positions: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """Each module's outputs (CPU) on S's outputs of the images at `positions` (None: all), one S pass."""
        split = self.split if positions is None else self.split.take(positions)
        for module in modules:
            module.eval()
        results: list[list[torch.Tensor]] = [[] for _ in modules]
        for images, _ in batches(split, self.info, output_batch(self.info.input_shape), device=device):
            features = self.features(images)
            for module, result in zip(modules, results):
                result.append(module(as_format(features, memory_format_of(module))).cpu())
        return [torch.cat(result) if result else torch.empty(0) for result in results]

    def probs(self, modules: Sequence[nn.Module], device: torch.device) -> list[torch.Tensor]:
        """Each module's softmax (float64, CPU) on the whole split, with one S pass for all of them."""
        return _probs(modules, len(self.labels), lambda real: self.outputs(real, device))

    def example(self, device: torch.device) -> torch.Tensor:
        """S's output (1, ...) for a blank image, e.g. for counting a head's MACs."""
        return self.features(torch.zeros(1, *self.info.input_shape, device=device))


@dataclass
class RecomputedBatches:
    """Training batches of S(x) (and teacher_fn(tail(S(x)))) from batches of images, S frozen (a fit `Batches`)."""

    source: RecomputedSplit
    split: Any
    targets: torch.Tensor
    teacher_fn: Callable[[torch.Tensor], torch.Tensor] | None
    batch_size: int = 128
    memory_format: torch.memory_format = torch.contiguous_format
    shuffle: bool = True

    @property
    def num_samples(self) -> int:
        return len(self.split)

    def __call__(self, generator: torch.Generator | None, device: torch.device):
        copies, info = self.source.copies, self.source.info
        augment = (copies - 1) / copies if copies > 1 else False
        targets = self.targets.to(device)
        pairs = batches(
            self.split, info, self.batch_size, shuffle=self.shuffle, augment=augment, generator=generator, device=device
        )
        for images, labels in pairs:
            features = self.source.features(images)
            inputs = as_format(features, self.memory_format)
            if self.teacher_fn is not None:
                with torch.no_grad():
                    inputs = (inputs, self.teacher_fn(self.source.tail(features)))
            yield inputs, targets[labels]


def backbone_tail(backbone: nn.Module, split: str, input_shape: Sequence[int]) -> nn.Module:
    """The backbone after S (its own later stages and FC), in eval mode on its device and memory format."""
    num_classes = backbone.fc.out_features
    tail = build_head(backbone, split, "L0", num_classes, input_shape, list(range(num_classes)))
    device = next(backbone.parameters()).device
    return tail.to(device=device, memory_format=memory_format_of(backbone)).eval()


def backbone_logits(
    backbone: nn.Module, split: str, features: torch.Tensor, input_shape: Sequence[int]
) -> torch.Tensor:
    """The backbone's logits (copies, N, C), on the CPU, from cached S outputs (copies, N, ...) by its later stages."""
    tail = backbone_tail(backbone, split, input_shape)
    return torch.stack([batched_outputs(tail, copy).cpu() for copy in features])


def cache_split(
    shared: nn.Module,
    data: Any,
    split_name: str,
    device: torch.device,
    copies: int = 1,
    seed: int = 0,
    limit: int | None = None,
) -> CachedSplit:
    """S's outputs for one split on the CPU: (copies, N, ...) for training (copy 0 clean, copy c augmented with seed
    seed + c), else (N, ...); written into one preallocated tensor."""
    split = getattr(data, split_name)
    if limit is not None:
        split = split.subset(limit, seed)
    copies = copies if split_name == "train" and data.info.augment != "none" else 1
    example = RecomputedSplit(shared, split, data.info).example(device)
    features = torch.empty((copies, len(split), *example.shape[1:]), dtype=example.dtype)
    for c in range(copies):
        generator = torch.Generator().manual_seed(seed + c)
        _fill(shared, split, data.info, device, features[c], augment=c > 0, generator=generator)
    return CachedSplit(features if split_name == "train" else features[0], split.labels)


def plan_features(budget: int, sizes: Mapping[str, int]) -> dict[str, str]:
    """Part -> "cache" if its outputs fit in what is left of `budget` bytes (parts in the order given), else
    "recompute"."""
    plan, left = {}, budget
    for part, size in sizes.items():
        plan[part] = "cache" if size <= left else "recompute"
        left -= size if plan[part] == "cache" else 0
    return plan


def shared_outputs(
    backbone: nn.Module,
    shared: nn.Module,
    split: str,
    data: Any,
    device: torch.device,
    config: Any,
    parts: Sequence[str] = PARTS,
    teacher: bool = True,
    copies: int | None = None,
) -> tuple[dict[str, CachedSplit | RecomputedSplit], dict[str, Any]]:
    """S's outputs for each of `parts`, cached or recomputed within `config.feature_budget()` (`plan_features`), with
    the backbone's logits as teacher for training when `teacher`, `copies` per training image (default
    `config.feature_copies`); and the plan (what cpcnn.json records)."""
    info, seed = data.info, config.seed
    splits = {part: getattr(data, part) for part in parts}
    if "train" in splits and config.train_images is not None:
        splits["train"] = splits["train"].subset(config.train_images, seed)
    copies = (config.feature_copies if copies is None else copies) if info.augment != "none" else 1
    example = RecomputedSplit(shared, data.train, info).example(device)
    per_image = example[0].numel() * example.element_size()
    teacher_bytes = backbone.fc.out_features * 4 if teacher else 0
    sizes = {
        part: len(images) * (copies * (per_image + teacher_bytes) if part == "train" else per_image)
        for part, images in splits.items()
    }
    budget = config.feature_budget()
    plan = plan_features(budget, sizes)
    tail = backbone_tail(backbone, split, info.input_shape) if teacher else None
    sources: dict[str, CachedSplit | RecomputedSplit] = {}
    for part, mode in plan.items():
        if mode == "recompute":
            training = part == "train"
            sources[part] = RecomputedSplit(
                shared, splits[part], info, copies if training else 1, tail if training else None
            )
            continue
        cached = cache_split(shared, data, part, device, copies, seed, config.train_images if part == "train" else None)
        if part == "train" and teacher:
            cached.teacher = torch.stack([batched_outputs(tail, copy).cpu() for copy in cached.features])
        elif part != "train" and _fits_on(device, sizes[part]):
            cached.features = cached.features.to(device)
        sources[part] = cached
    record = {"budget_bytes": budget, "bytes_per_image": per_image, "bytes": sizes, "modes": plan}
    return sources, record


def _fits_on(device: torch.device, size: int) -> bool:
    """Whether `size` bytes fit in half of the device's free memory (always, for the CPU: they are there already)."""
    return device.type != "cuda" or size <= torch.cuda.mem_get_info(device)[0] // 2


def normalised_images(
    split: Any,
    info: Any,
    device: torch.device,
    limit: int | None,
    seed: int,
    start: int = 0,
    stop: int | None = None,
) -> torch.Tensor:
    """Normalised float images of `split[start:stop]` (or a stratified subset of `limit` images); any split kind."""
    if limit is not None:
        split = split.subset(limit, seed)
    return normalize(split.read_images(start, stop).to(device), info).contiguous()
