"""The MS-CNN's static parts as modules with tensor-only inputs, each exported as one graph.

A stage body reads its own sub-band out of the DWT output, so the host passes the same (B, 4, C, h, w) bands to
every stage. The pruned variants take the rows or filters to compute as int64 index inputs and gather those
weights inside the graph: `HeadRows` (fc_rows "batch": the rows any image keeps), `HeadPairs` (fc_rows
"image": one dot product per kept (image, class) pair, Alg. 2) and `KeptFilters` (CAP_CONV, Alg. 3: the last
CONV layer computing only the kept filters).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from dynacnn.mscnn.model import StageBody, StageHead


class StagePart(nn.Module):
    """bands (B, 4, C, h, w) -> the stage's pooled, flattened last-CONV maps (B, F * pool area)."""

    def __init__(self, body: StageBody, pool: nn.Module, band: int) -> None:
        super().__init__()
        self.body, self.pool, self.band = body, pool, band

    def forward(self, bands: torch.Tensor) -> torch.Tensor:
        return self.pool(self.body(bands[:, self.band])).flatten(1)


class TrunkPart(nn.Module):
    """bands (B, 4, C, h, w) -> the stage's maps before its last CONV layer (CAP_CONV runs that layer apart)."""

    def __init__(self, body: StageBody, band: int) -> None:
        super().__init__()
        self.features, self.band = body.features, band

    def forward(self, bands: torch.Tensor) -> torch.Tensor:
        return self.features(bands[:, self.band])


class KeptFilters(nn.Module):
    """Alg. 3: maps (B, C, h, w), keep (F',) -> last CONV (BatchNorm folded) + ReLU over the kept filters only,
    pooled and flattened (B, F' * pool area)."""

    def __init__(self, last: nn.Sequential, pool: nn.Module) -> None:
        super().__init__()
        conv, norm = last[0], last[1]
        if conv.bias is None or not isinstance(norm, nn.Identity):
            raise ValueError("KeptFilters needs the last CONV layer with its BatchNorm folded (fold_batchnorm)")
        self.conv, self.pool = conv, pool

    def forward(self, maps: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        weight, bias = conv.weight.index_select(0, keep), conv.bias.index_select(0, keep)
        y = F.conv2d(maps, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        return self.pool(torch.relu(y)).flatten(1)


class HeadRows(nn.Module):
    """fc_rows "batch": features (B, D), classes (K',) -> logits of those classes (B, K')."""

    def __init__(self, head: StageHead) -> None:
        super().__init__()
        self.head = head

    def forward(self, features: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        fc = self.head.fc
        return F.linear(
            self.head.hidden(features), fc.weight.index_select(0, classes), fc.bias.index_select(0, classes)
        )


class HeadPairs(nn.Module):
    """fc_rows "image" (Alg. 2): features (B, D), rows (P,), classes (P,) -> the logit of class classes[p] for
    image rows[p] (P,), one weight row per kept pair."""

    def __init__(self, head: StageHead) -> None:
        super().__init__()
        self.head = head

    def forward(self, features: torch.Tensor, rows: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        fc = self.head.fc
        hidden = self.head.hidden(features).index_select(0, rows)
        return (fc.weight.index_select(0, classes) * hidden).sum(1) + fc.bias.index_select(0, classes)
