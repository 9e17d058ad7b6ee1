"""§3.1 of CP-CNN: the blocks of the compression flow (bottleneck, bottleneck-compression) and a micro-CNN head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dynacnn.errors import ConfigError

BOTTLENECK, COMPRESSION = (1, 3, 1), (3, 1, 3)
KERNEL_NAMES = {BOTTLENECK: "bottleneck", COMPRESSION: "bottleneck-compression"}


class CompressedBlock(nn.Module):
    """§3.1: three conv-BN layers (1-3-1 bottleneck or 3-1-3 bottleneck-compression); the first `halvings` 3x3 convs have stride 2."""

    def __init__(self, in_channels: int, widths: Sequence[int], kernels: Sequence[int], halvings: int = 0) -> None:
        super().__init__()
        threes = [index for index, kernel in enumerate(kernels) if kernel == 3]
        if halvings > len(threes):
            raise ConfigError(f"a block with {len(threes)} 3x3 convolution(s) cannot halve the size {halvings} times")
        strides = [2 if index in threes[:halvings] else 1 for index in range(3)]
        channels = [in_channels, *widths]
        for index, (kernel, stride) in enumerate(zip(kernels, strides), start=1):
            conv = nn.Conv2d(
                channels[index - 1], channels[index], kernel, stride=stride, padding=kernel // 2, bias=False
            )
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            setattr(self, f"conv{index}", conv)
            setattr(self, f"bn{index}", nn.BatchNorm2d(channels[index]))
        self.relu = nn.ReLU(inplace=True)
        self.step = 2**halvings
        self.skip = in_channels == widths[-1]
        if self.skip:
            nn.init.zeros_(self.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.skip:
            out = out + (x if self.step == 1 else x[:, :, :: self.step, :: self.step])
        return self.relu(out)


class Bottleneck(CompressedBlock):
    """§3.1 bottleneck block (1x1, x; 3x3, y; 1x1, z)."""

    def __init__(self, in_channels: int, widths: Sequence[int], halvings: int = 0) -> None:
        super().__init__(in_channels, widths, BOTTLENECK, halvings)


class BottleneckCompression(CompressedBlock):
    """§3.1 bottleneck-compression block (3x3, x; 1x1, y; 3x3, z)."""

    def __init__(self, in_channels: int, widths: Sequence[int], halvings: int = 0) -> None:
        super().__init__(in_channels, widths, COMPRESSION, halvings)


class HyperClassHead(nn.Module):
    """A micro-CNN of Table 1 (or LC / LP) on S's output: stages, average pool, FC over its classes."""

    def __init__(self, body: nn.Sequential, in_features: int, num_outputs: int) -> None:
        super().__init__()
        self.body = body
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_features, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.body(x)), 1))
