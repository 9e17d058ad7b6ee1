"""§3.1 and Table 1 of CP-CNN: the shared part S and the family of compressed micro-CNN configurations.

A backbone is any ResNet with torchvision's attribute names (conv1, bn1, relu, maxpool, layer1..layer4,
avgpool, fc), of BasicBlocks or bottlenecks: ours (`dynacnn.models`), a torchvision ResNet, or a timm ResNet
behind `dynacnn.models.TimmResNet` (`dynacnn.models.build_external` / `load_backbone` make the latter two).

Shared part S (`shared_part`): copies of the stem and of the stages up to the split point ("stem",
"layer1", "layer2" or "layer3"), frozen, in eval mode. Every later stage belongs to the heads.

Compression flow (`build_head`): Table 1 says, for each configuration, which stages are replaced,
starting from the last one, and by what:
- a bottleneck block (1x1, x; 3x3, y; 1x1, z) replaces one stage's BasicBlock pair (L1, L2, L3, L4),
- two consecutive bottlenecks are replaced by one bottleneck-compression block (3x3, x; 1x1, y; 3x3, z)
  spanning both stages (layer3 + layer4 in L22, L33 and L44), and L44 also merges the layer1 and layer2
  bottlenecks into one bottleneck spanning both.
Table 1 draws a block spanning two stages in both stages' rows; that reading is the one whose MACs
match the paper's reductions (see `table1_reduction`). Widths are written as stage indices: (4, 4, 1) is
(c4, c4, c1), c_i being the backbone's width of layer i (64, 128, 256, 512 for ResNet-18), so the table
transfers to narrower backbones; as in the paper, the last block ends with c1 channels.
Bottleneck backbones (ResNet-50, ...): c_i is stage i's base width, its output channels over the blocks'
expansion (64, 128, 256, 512 for ResNet-50), so Table 1 builds the same blocks as for ResNet-18; a block's
input is what really precedes it (1024 channels after layer3 of ResNet-50), and LC's convolution goes to c_i.
Stride (§3.1 spatial rule): from the replaced stages' input and output sizes, each halving (rounded up,
as a padded 3x3 convolution does) is one stride-2 3x3 convolution, taken by the block's first 3x3
convolutions in order; a bottleneck can halve once, a bottleneck-compression block twice.
Skip connection (§3.1): added when the block's input and output channels match (identity, subsampled
by taking every second pixel when the block halves the size, as He et al.'s option A); otherwise none,
as in the paper, because a projection shortcut would add MACs that Table 1 does not have.
Stages a configuration keeps are copied from the backbone with their trained weights and fine-tuned.

Two small configurations are ours, not Table 1's, for the clustifier (and available to heads):
"LC" = one 3x3 convolution to the next stage's width (c_i) with its stride, BatchNorm, ReLU, average pool,
FC; "LP" = average pool + FC on S's output.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dynacnn.cpcnn.heads import BOTTLENECK, COMPRESSION, CompressedBlock, HyperClassHead
from dynacnn.errors import ConfigError
from dynacnn.flops import count_macs
from dynacnn.models import ARCHITECTURES, build_external, build_resnet

STAGES = ("layer1", "layer2", "layer3", "layer4")
SPLIT_POINTS = ("stem", *STAGES[:-1])

Replacement = tuple[tuple[str, ...], tuple[int, int, int], tuple[int, int, int]]
TABLE1: dict[str, tuple[Replacement, ...]] = {
    "L0": (),
    "L1": ((("layer4",), BOTTLENECK, (4, 4, 1)),),
    "L2": ((("layer3",), BOTTLENECK, (3, 3, 3)), (("layer4",), BOTTLENECK, (4, 4, 1))),
    "L22": ((("layer3", "layer4"), COMPRESSION, (3, 4, 1)),),
    "L3": (
        (("layer2",), BOTTLENECK, (2, 2, 2)),
        (("layer3",), BOTTLENECK, (3, 3, 3)),
        (("layer4",), BOTTLENECK, (4, 4, 1)),
    ),
    "L33": ((("layer2",), BOTTLENECK, (2, 2, 2)), (("layer3", "layer4"), COMPRESSION, (3, 4, 1))),
    "L4": (
        (("layer1",), BOTTLENECK, (1, 1, 1)),
        (("layer2",), BOTTLENECK, (2, 2, 2)),
        (("layer3",), BOTTLENECK, (3, 3, 3)),
        (("layer4",), BOTTLENECK, (4, 4, 1)),
    ),
    "L44": ((("layer1", "layer2"), BOTTLENECK, (2, 2, 2)), (("layer3", "layer4"), COMPRESSION, (3, 4, 1))),
}
"""Table 1: for each configuration, its blocks as (replaced stages, kernel sizes, widths as stage indices)."""
SMALL_CONFIGS = ("LC", "LP")
CONFIGURATIONS = (*TABLE1, *SMALL_CONFIGS)
PAPER_ROW = {"L0": 0.0, "L1": 0.147, "L2": 0.287, "L22": 0.428, "L3": 0.605, "L33": 0.397, "L4": 0.538, "L44": 0.793}
"""Table 1's "Complexity Reduction" row for ResNet-18 (ImageNet stem, 224x224) under its printed headers."""
PAPER_REDUCTION = {
    "L0": 0.0,
    "L1": 0.147,
    "L2": 0.287,
    "L3": 0.428,
    "L4": 0.605,
    "L22": 0.397,
    "L33": 0.538,
    "L44": 0.793,
}
"""The same row read in the order L0, L1, L2, L3, L4, L22, L33, L44: the reading our MAC counts match.

Under the printed headers L3 would save more than L4, which replaces a superset of L3's stages by the
same blocks; read in this order, every value agrees with our count to within 0.4 points."""
PAPER_ARCHS = ("resnet18", "torchvision:resnet18", "timm:resnet18")
"""Architectures that are the paper's ResNet-18, so its Table 1 row applies."""


@dataclass(frozen=True)
class StageShape:
    """Input and output (channels, height, width) of one backbone stage for one input size."""

    name: str
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]


def halvings(name: str, in_shape: Sequence[int], out_shape: Sequence[int], limit: int) -> int:
    """§3.1 spatial rule: how many stride-2 3x3 convolutions (at most `limit`) map `in_shape` to `out_shape`."""
    size, target = tuple(in_shape[1:]), tuple(out_shape[1:])
    for count in range(limit + 1):
        if size == target:
            return count
        size = tuple(math.ceil(side / 2) for side in size)
    raise ConfigError(
        f"{name} maps {in_shape[1]}x{in_shape[2]} to {out_shape[1]}x{out_shape[2]}; the block replacing it "
        f"can only halve the size {limit} time(s) (§3.1 spatial rule)"
    )


def check_backbone(backbone: nn.Module) -> None:
    """Refuse a module without torchvision's ResNet attribute names."""
    missing = [name for name in ("conv1", "bn1", "relu", "maxpool", *STAGES, "fc") if not hasattr(backbone, name)]
    if missing:
        raise ConfigError(
            f"backbone {type(backbone).__name__} has no {', '.join(missing)}; pass a ResNet with torchvision's attribute "
            "names (a timm ResNet through dynacnn.models.TimmResNet(model, 'timm:<name>') or build_external)"
        )


def check_split(split: str) -> str:
    """Refuse a split point past the end of the backbone (or an unknown one)."""
    if split not in SPLIT_POINTS:
        if split in ("layer4", "avgpool", "fc"):
            raise ConfigError(
                f"split point {split!r} leaves no stage for the hyper-class heads; use one of {', '.join(SPLIT_POINTS)}"
            )
        raise ConfigError(f"unknown split point {split!r}; use one of {', '.join(SPLIT_POINTS)}")
    return split


def head_stages(split: str) -> tuple[str, ...]:
    """The backbone stages after `split`: the non-shared part, rebuilt in each head."""
    return STAGES[SPLIT_POINTS.index(check_split(split)) :]


def stem(backbone: nn.Module) -> list[tuple[str, nn.Module]]:
    """The stem's modules, named as in the backbone."""
    return [(name, getattr(backbone, name)) for name in ("conv1", "bn1", "relu", "maxpool")]


@torch.no_grad()
def stage_shapes(backbone: nn.Module, input_shape: Sequence[int]) -> dict[str, StageShape]:
    """Input/output shapes of layer1..layer4 for one image of `input_shape` (C, H, W)."""
    check_backbone(backbone)
    was_training = backbone.training
    backbone.eval()
    try:
        param = next(backbone.parameters())
        x = torch.zeros(1, *input_shape, dtype=param.dtype, device=param.device)
        for _, module in stem(backbone):
            x = module(x)
        shapes = {}
        for name in STAGES:
            y = getattr(backbone, name)(x)
            shapes[name] = StageShape(name, tuple(x.shape[1:]), tuple(y.shape[1:]))
            x = y
    finally:
        backbone.train(was_training)
    return shapes


def stage_widths(backbone: nn.Module, shapes: dict[str, StageShape]) -> dict[int, int]:
    """Table 1's c_i: stage i's output channels over its blocks' expansion (1 for BasicBlocks, 4 for bottlenecks)."""
    widths = {}
    for index, name in enumerate(STAGES, start=1):
        blocks = list(getattr(backbone, name).children()) or [getattr(backbone, name)]
        widths[index] = shapes[name].out_shape[0] // int(getattr(blocks[-1], "expansion", 1))
    return widths


def shared_part(backbone: nn.Module, split: str) -> nn.Sequential:
    """S of §3.1: frozen copies of the backbone's stem and stages up to `split`."""
    check_backbone(backbone)
    modules = stem(backbone) + [
        (name, getattr(backbone, name)) for name in STAGES[: SPLIT_POINTS.index(check_split(split))]
    ]
    shared = nn.Sequential()
    for name, module in modules:
        shared.add_module(name, copy.deepcopy(module))
    shared.requires_grad_(False)
    return shared.eval()


def available_configurations(split: str) -> tuple[str, ...]:
    """Table 1 configurations that only replace stages after `split`, then the small ones (LC, LP)."""
    stages = set(head_stages(split))
    return tuple(name for name, blocks in TABLE1.items() if all(set(b[0]) <= stages for b in blocks)) + SMALL_CONFIGS


def _body(backbone: nn.Module, split: str, name: str, shapes: dict[str, StageShape]) -> tuple[nn.Sequential, int]:
    """The stages after `split` for configuration `name`, and their output channels."""
    stages = head_stages(split)
    first = shapes[stages[0]]
    widths = stage_widths(backbone, shapes)
    body = nn.Sequential()
    if name == "LP":
        return body, first.in_shape[0]
    if name == "LC":
        steps = halvings(first.name, first.in_shape, first.out_shape, 1)
        width = widths[STAGES.index(first.name) + 1]
        body.add_module("conv", nn.Conv2d(first.in_shape[0], width, 3, 2**steps, 1, bias=False))
        body.add_module("bn", nn.BatchNorm2d(width))
        body.add_module("relu", nn.ReLU(inplace=True))
        return body, width
    blocks = {spanned[0]: (spanned, kernels, indices) for spanned, kernels, indices in TABLE1[name]}
    channels, position = first.in_shape[0], 0
    while position < len(stages):
        stage = stages[position]
        if stage in blocks:
            spanned, kernels, indices = blocks[stage]
            label = "+".join(spanned)
            steps = halvings(label, shapes[spanned[0]].in_shape, shapes[spanned[-1]].out_shape, kernels.count(3))
            module: nn.Module = CompressedBlock(channels, [widths[i] for i in indices], kernels, steps)
            body.add_module(label.replace("+", "_"), module)
            channels, position = widths[indices[-1]], position + len(spanned)
        else:
            body.add_module(stage, copy.deepcopy(getattr(backbone, stage)))
            channels, position = shapes[stage].out_shape[0], position + 1
    return body, channels


def build_head(
    backbone: nn.Module,
    split: str,
    name: str,
    num_outputs: int,
    input_shape: Sequence[int],
    classes: Sequence[int] | None = None,
) -> HyperClassHead:
    """Compression flow of §3.1: configuration `name` of the stages after `split`, with `num_outputs` classes.

    Kept stages start from the backbone's weights; with `classes` (backbone class ids, one per output) and
    an FC of the backbone's width (L0), the FC starts from the backbone's rows for those classes.
    """
    if name not in CONFIGURATIONS:
        raise ConfigError(f"unknown configuration {name!r}; use one of {', '.join(CONFIGURATIONS)}")
    if name not in available_configurations(split):
        raise ConfigError(
            f"configuration {name} replaces stages inside S (split {split}); use one of "
            f"{', '.join(available_configurations(split))}"
        )
    if classes is not None and len(classes) != num_outputs:
        raise ConfigError(f"classes has {len(classes)} entries for a head with {num_outputs} outputs")
    body, channels = _body(backbone, split, name, stage_shapes(backbone, input_shape))
    head = HyperClassHead(body, channels, num_outputs)
    if classes is not None and name == "L0":
        index = torch.as_tensor(list(classes), dtype=torch.long)
        with torch.no_grad():
            head.fc.weight.copy_(backbone.fc.weight[index])
            head.fc.bias.copy_(backbone.fc.bias[index])
    return head.requires_grad_(True)


def describe(name: str) -> str:
    """A compact Table 1 cell for configuration `name`, e.g. 'layer3+layer4: 3x3-1x1-3x3 (c3,c4,c1)'."""
    if name == "LC":
        return "3x3 conv to the next stage's width, pool, FC"
    if name == "LP":
        return "pool, FC"
    if not TABLE1[name]:
        return "original stages"
    return "; ".join(
        f"{'+'.join(spanned)}: {'-'.join(f'{k}x{k}' for k in kernels)} ({','.join(f'c{i}' for i in indices)})"
        for spanned, kernels, indices in TABLE1[name]
    )


@dataclass
class ConfigurationCost:
    """MACs and parameters of one image through S + one head of a configuration."""

    name: str
    macs: int
    params: int
    shared_macs: int
    head_macs: int
    head_params: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "macs": self.macs,
            "params": self.params,
            "shared_macs": self.shared_macs,
            "head_macs": self.head_macs,
            "head_params": self.head_params,
        }


def configuration_costs(
    backbone: nn.Module,
    split: str,
    input_shape: Sequence[int],
    num_outputs: int,
    names: Sequence[str] | None = None,
) -> list[ConfigurationCost]:
    """Table 1 (bottom): MACs and params of S + each configuration's head, counted with dynacnn.flops."""
    shared = shared_part(backbone, split)
    x = torch.zeros(1, *input_shape, device=next(backbone.parameters()).device)
    shared_cost = count_macs(shared, x)
    with torch.no_grad():
        features = shared(x)
    rows = []
    for name in names or available_configurations(split):
        head = build_head(backbone, split, name, num_outputs, input_shape)
        head_cost = count_macs(head, features)
        rows.append(
            ConfigurationCost(
                name,
                shared_cost.macs + head_cost.macs,
                shared_cost.params + head_cost.params,
                shared_cost.macs,
                head_cost.macs,
                head_cost.params,
            )
        )
    return rows


def reduction_rows(
    backbone: nn.Module,
    split: str,
    input_shape: Sequence[int],
    num_outputs: int,
    names: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Table 1 (bottom) for any backbone: costs and MAC reduction against S + L0 of each configuration (default:
    every one available at `split`)."""
    wanted = list(available_configurations(split) if names is None else names)
    rows = configuration_costs(backbone, split, input_shape, num_outputs, ["L0", *(n for n in wanted if n != "L0")])
    base = rows[0].macs
    return [
        {**row.to_dict(), "reduction": 1 - row.macs / base, "blocks": describe(row.name)}
        for row in rows
        if row.name in wanted
    ]


@functools.lru_cache(maxsize=8)
def table1_reduction(
    num_classes: int = 100, arch: str = "resnet18", image_size: int = 224
) -> tuple[dict[str, Any], ...]:
    """Table 1 reproduction: `arch` (ours with the ImageNet stem, or an arch string such as "torchvision:resnet50"),
    S = stem, our MAC reduction beside the paper's (None for architectures other than ResNet-18)."""
    with torch.device("meta"):  # shapes only: the flop counter needs no values
        if arch in ARCHITECTURES:
            backbone = build_resnet(arch, num_classes, 3, 1.0, "imagenet").eval()
        else:
            backbone = build_external(arch, num_classes).eval()
        rows = reduction_rows(backbone, "stem", (3, image_size, image_size), num_classes, list(TABLE1))
    paper = arch in PAPER_ARCHS and image_size == 224
    return tuple(
        {
            **row,
            "paper_reduction": PAPER_REDUCTION[row["name"]] if paper else None,
            "paper_printed": PAPER_ROW[row["name"]] if paper else None,
        }
        for row in rows
    )
