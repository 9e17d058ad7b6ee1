"""Cost model: MACs and parameters an image needs, given which stages it ran and which classes/filters they computed.

Each component is measured once with `count_call_macs` (the same counter that checks the executed
paths), so per-image costs of cached policies match what the execution paths really run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from dynacnn.flops import count_call_macs, count_params
from dynacnn.mscnn.model import MSCNN


@dataclass(frozen=True)
class StageCost:
    """One stage's costs: conv stack (with the DWT in stage 1), FC hidden layers, per class row and per last-CONV filter."""

    body_macs: int
    body_params: int
    hidden_macs: int
    hidden_params: int
    fc_in: int
    filter_macs: int
    filter_params: int
    num_classes: int

    @property
    def macs(self) -> int:
        """MACs of the whole stage (all classes, all filters)."""
        return self.body_macs + self.hidden_macs + self.fc_in * self.num_classes

    @property
    def params(self) -> int:
        """Parameters of the whole stage (body and classifier)."""
        return self.body_params + self.hidden_params + (self.fc_in + 1) * self.num_classes


@dataclass(frozen=True)
class CostModel:
    """Per-stage costs of an MS-CNN; `macs`/`params` turn a Decision's `kept` (S, B) into per-image costs."""

    stages: tuple[StageCost, ...]

    def macs(self, kept: torch.Tensor, removed: torch.Tensor | None = None) -> torch.Tensor:
        """Per-image MACs (B,): stages with kept > 0 ran; `removed` (S,) last-CONV filters skipped per stage."""
        return self._total(kept, removed, "macs")

    def params(self, kept: torch.Tensor, removed: torch.Tensor | None = None) -> torch.Tensor:
        """Per-image parameters read (B,), as `macs`."""
        return self._total(kept, removed, "params")

    def _total(self, kept: torch.Tensor, removed: torch.Tensor | None, what: str) -> torch.Tensor:
        total = torch.zeros(kept.shape[1], dtype=torch.float64)
        for stage, cost in enumerate(self.stages):
            ran = (kept[stage] > 0).double()
            if what == "macs":
                fixed, row, per_filter = cost.body_macs + cost.hidden_macs, cost.fc_in, cost.filter_macs
            else:
                fixed, row, per_filter = cost.body_params + cost.hidden_params, cost.fc_in + 1, cost.filter_params
            skipped = 0 if removed is None else int(removed[stage]) * per_filter
            total += ran * (fixed - skipped) + row * kept[stage].double()
        return total

    @property
    def full_macs(self) -> int:
        return sum(s.macs for s in self.stages)

    def to_rows(self) -> list[dict]:
        return [asdict(s) | {"macs": s.macs, "params": s.params} for s in self.stages]


@torch.no_grad()
def measure_costs(model: MSCNN, input_shape: tuple[int, int, int]) -> CostModel:
    """Measure every stage's component costs on one image (Table II analog)."""
    model.eval()
    x = torch.zeros(1, *input_shape, device=next(model.parameters()).device)
    dwt_macs, bands = count_call_macs(model.dwt, x)
    pooled, costs = [], []
    for stage, (body, head) in enumerate(zip(model.bodies, model.heads)):
        band = bands[:, model.band_index[stage]]
        body_macs, hidden_maps = count_call_macs(body.features, band)
        last_macs, maps = count_call_macs(body.last, hidden_maps)
        pooled.append(model.pool(maps).flatten(1))
        hidden_macs, _ = count_call_macs(head.hidden, torch.cat(pooled, 1))
        filters = body.last[0].out_channels
        costs.append(
            StageCost(
                body_macs=body_macs + last_macs + (dwt_macs if stage == 0 else 0),
                body_params=count_params(body),
                hidden_macs=hidden_macs,
                hidden_params=count_params(head.hidden),
                fc_in=head.fc.in_features,
                filter_macs=last_macs // filters,
                filter_params=count_params(body.last) // filters,
                num_classes=head.fc.out_features,
            )
        )
    return CostModel(tuple(costs))
