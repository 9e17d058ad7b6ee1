"""ResNet-18/34 from BasicBlocks, with torchvision's stage structure (conv1/bn1/relu/maxpool, layer1..4, avgpool, fc)."""

from __future__ import annotations

import torch
from torch import nn

from dynacnn.errors import ConfigError

STAGE_BLOCKS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}
STEMS = ("small", "small-pool", "imagenet")
"""small: 3x3 conv, stride 1 (CIFAR-style); small-pool: the same followed by a 2x2 max-pool; imagenet: 7x7/2 conv + 3x3/2 max-pool."""


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias (a BatchNorm follows)."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution with no bias (a BatchNorm follows)."""
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity or 1x1 projection shortcut (He et al. 2016)."""

    expansion = 1

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """A ResNet whose attribute names match torchvision's, so conversion code accepts either."""

    def __init__(
        self,
        blocks: tuple[int, ...] = (2, 2, 2, 2),
        num_classes: int = 10,
        in_channels: int = 3,
        width: float = 1.0,
        stem: str = "small",
    ) -> None:
        super().__init__()
        if stem not in STEMS:
            raise ConfigError(f"unknown stem {stem!r}; use one of {', '.join(STEMS)}")
        if width <= 0:
            raise ConfigError(f"width multiplier must be positive, got {width}")
        if num_classes < 2:
            raise ConfigError(f"num_classes must be at least 2, got {num_classes}")
        widths = [max(4, int(round(64 * width * 2**i))) for i in range(4)]
        self.stem = stem
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, widths[0], 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1)
        else:
            self.conv1 = conv3x3(in_channels, widths[0])
            self.maxpool = nn.MaxPool2d(2, stride=2) if stem == "small-pool" else nn.Identity()
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        channels = widths[0]
        for index, (count, out_channels) in enumerate(zip(blocks, widths), start=1):
            stride = 1 if index == 1 else 2
            layers = []
            for block_index in range(count):
                layers.append(BasicBlock(channels, out_channels, stride if block_index == 0 else 1))
                channels = out_channels
            setattr(self, f"layer{index}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for module in self.modules():
            if isinstance(module, BasicBlock):
                nn.init.zeros_(module.bn2.weight)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Everything before the classifier: the pooled, flattened last feature map."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def build_resnet(
    arch: str = "resnet18",
    num_classes: int = 10,
    in_channels: int = 3,
    width: float = 1.0,
    stem: str = "small",
) -> ResNet:
    """Build `arch` ('resnet18' or 'resnet34') with the given stem, width multiplier and class count."""
    if arch not in STAGE_BLOCKS:
        raise ConfigError(f"unknown architecture {arch!r}; use one of {', '.join(STAGE_BLOCKS)}")
    return ResNet(STAGE_BLOCKS[arch], num_classes, in_channels, width, stem)
