"""The multi-stage CNN (ICNN / MS-CNN, Fig. 1): one uCNN per Haar sub-band, features concatenated forward.

Stage i runs its own conv stack on its sub-band; its last CONV layer's feature maps are average-pooled
to `pool` x `pool` and concatenated with those of stages 1..i-1 (pooling and concatenation commute, so
each stage's maps are pooled once); the concatenation goes through the stage's FC classifier (hidden
layers, then the last FC layer with one row per class). The forward returns every stage's logits.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from dynacnn.errors import ConfigError
from dynacnn.mscnn.dwt import BANDS, HaarDWT


@dataclass(frozen=True)
class StageConfig:
    """One uCNN: its sub-band, conv widths/strides before the last CONV layer, the last CONV width, FC hidden widths."""

    band: str = "LL"
    widths: tuple[int, ...] = (16, 32, 64)
    strides: tuple[int, ...] = (1, 2, 2)
    last: int = 64
    hidden: tuple[int, ...] = ()
    residual: bool = True

    def validate(self, index: int) -> None:
        """Refuse an unknown band or non-positive widths."""
        where = f"stage {index + 1}"
        if self.band not in BANDS:
            raise ConfigError(f"{where}: band {self.band!r} is not one of {', '.join(BANDS)}")
        if not self.widths or len(self.widths) != len(self.strides):
            raise ConfigError(f"{where}: widths and strides need the same, non-zero length")
        if min((*self.widths, self.last, *self.hidden)) < 1 or min(self.strides) < 1:
            raise ConfigError(f"{where}: widths, strides and hidden sizes must be positive integers")


@dataclass(frozen=True)
class MSCNNConfig:
    """The whole MS-CNN: stages, input channels, classes and the pooled size of each stage's last maps."""

    stages: tuple[StageConfig, ...] = field(default_factory=tuple)
    in_channels: int = 1
    num_classes: int = 10
    pool: int = 2

    def validate(self) -> MSCNNConfig:
        if len(self.stages) < 2:
            raise ConfigError(f"an MS-CNN needs at least 2 stages, got {len(self.stages)}")
        if self.num_classes < 2 or self.in_channels < 1 or self.pool < 1:
            raise ConfigError("num_classes must be >= 2, in_channels >= 1 and pool >= 1")
        for index, stage in enumerate(self.stages):
            stage.validate(index)
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> MSCNNConfig:
        stages = tuple(
            StageConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in s.items()}) for s in data["stages"]
        )
        return cls(stages, data["in_channels"], data["num_classes"], data["pool"]).validate()


def default_config(num_stages: int = 4, in_channels: int = 1, num_classes: int = 10) -> MSCNNConfig:
    """Default for 28-32 px inputs: stages cycle through LL, LH, HL, HH (a 5th stage and later re-use them).

    Each stage on its 14 px sub-band: 3x3 conv (16) at 14 px, residual blocks to 32 channels at 7 px and
    64 at 4 px, last CONV 3x3 (64) at 4 px, maps pooled to 2x2; one FC layer per stage (no hidden FC).
    """
    stages = tuple(StageConfig(band=BANDS[i % 4]) for i in range(num_stages))
    return MSCNNConfig(stages, in_channels, num_classes).validate()


def table2_config(num_classes: int = 1000, in_channels: int = 3) -> MSCNNConfig:
    """Table II's 7-stage AlexNet widths: CONV1-5 = 24, 64, 96, 48, 32; FC6/FC7 1024 (s1-4), 2048 (s5-6), 4096 (s7)."""
    hidden = (1024,) * 4 + (2048,) * 2 + (4096,)
    stages = tuple(
        StageConfig(BANDS[i % 4], (24, 64, 96, 48), (2, 2, 2, 1), 32, (h, h), residual=False)
        for i, h in enumerate(hidden)
    )
    return MSCNNConfig(stages, in_channels, num_classes, pool=6).validate()


def conv_bn(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    """3x3 conv (no bias) + BatchNorm + ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ResidualBlock(nn.Module):
    """Two 3x3 conv + BN with an identity or strided 1x1 projection shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv_bn(in_channels, out_channels, stride)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn2(self.conv2(self.conv1(x))) + self.shortcut(x))


class StageBody(nn.Module):
    """A uCNN's conv stack: a first conv, residual blocks (or plain convs), then the last CONV layer."""

    def __init__(self, in_channels: int, config: StageConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn(in_channels, config.widths[0], config.strides[0])]
        for previous, width, stride in zip(config.widths, config.widths[1:], config.strides[1:]):
            layers.append(
                ResidualBlock(previous, width, stride) if config.residual else conv_bn(previous, width, stride)
            )
        self.features = nn.Sequential(*layers)
        self.last = conv_bn(config.widths[-1], config.last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.features(x))


class StageHead(nn.Module):
    """A uCNN's FC classifier over the concatenated pooled maps: hidden FC + ReLU layers, then `fc` (one row per class)."""

    def __init__(self, in_features: int, hidden: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(in_features, width), nn.ReLU(inplace=True)]
            in_features = width
        self.hidden = nn.Sequential(*layers)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.hidden(features))


class MSCNN(nn.Module):
    """Fig. 1 multi-stage CNN; forward(x) -> list of per-stage logits (B, K)."""

    def __init__(self, config: MSCNNConfig) -> None:
        super().__init__()
        self.config = config.validate()
        self.dwt = HaarDWT()
        self.pool = nn.AdaptiveAvgPool2d(config.pool)
        self.band_index = [BANDS.index(stage.band) for stage in config.stages]
        self.bodies = nn.ModuleList(StageBody(config.in_channels, stage) for stage in config.stages)
        area = config.pool * config.pool
        widths = [stage.last * area for stage in config.stages]
        self.heads = nn.ModuleList(
            StageHead(sum(widths[: i + 1]), stage.hidden, config.num_classes) for i, stage in enumerate(config.stages)
        )

    @property
    def num_stages(self) -> int:
        return len(self.bodies)

    def features(self, bands: torch.Tensor, stage: int) -> torch.Tensor:
        """Pooled, flattened last-CONV maps of `stage` (0-based) from the DWT output (B, 4, C, h, w)."""
        return self.pool(self.bodies[stage](bands[:, self.band_index[stage]])).flatten(1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        bands = self.dwt(x)
        pooled: list[torch.Tensor] = []
        logits = []
        for stage, head in enumerate(self.heads):
            pooled.append(self.features(bands, stage))
            logits.append(head(torch.cat(pooled, 1)))
        return logits
