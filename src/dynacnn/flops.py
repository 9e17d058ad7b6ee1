"""MAC and parameter counting on `torch.utils.flop_counter`.

`FlopCounterMode` counts the FLOPs of the matrix ops that actually ran (convolutions, linear layers,
matmuls) as 2 per multiply-accumulate, so MACs = FLOPs / 2. Element-wise ops (BatchNorm, ReLU,
pooling, additions) are not counted, as in torchvision's published figures. Because only executed
ops are counted, the same call measures the real cost of routed and early-exit execution.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

MAC_NOTE = "MACs = torch.utils.flop_counter FLOPs / 2 (conv, linear, matmul; element-wise ops not counted)"


@dataclass
class ModuleCost:
    """Cost of one named sub-module for the counted call."""

    name: str
    macs: int
    params: int


@dataclass
class CostReport:
    """MACs of one counted call, its batch size, the parameter count and a per-module breakdown."""

    macs: int
    params: int
    batch_size: int
    rows: list[ModuleCost] = field(default_factory=list)

    @property
    def macs_per_image(self) -> float:
        return self.macs / max(self.batch_size, 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "macs": self.macs_per_image,
            "params": self.params,
            "note": MAC_NOTE,
            "modules": [
                {"name": row.name, "macs": row.macs / max(self.batch_size, 1), "params": row.params}
                for row in self.rows
            ],
        }

    def table(self) -> str:
        """Per-module table (MACs per image), as markdown."""
        lines = ["| module | MACs | params |", "| --- | ---: | ---: |"]
        for row in self.rows:
            lines.append(
                f"| {row.name} | {format_count(row.macs / max(self.batch_size, 1))} | {format_count(row.params)} |"
            )
        lines.append(f"| **total** | **{format_count(self.macs_per_image)}** | **{format_count(self.params)}** |")
        return "\n".join(lines) + f"\n\n{MAC_NOTE}\n"


def format_count(value: float) -> str:
    """12345678 -> '12.35 M'."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f}"


def count_params(module: nn.Module) -> int:
    """Number of parameters of `module` (shared parameters counted once)."""
    return sum(p.numel() for p in module.parameters())


def count_call_macs(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[int, Any]:
    """Run `fn(*args, **kwargs)` under the flop counter; return (MACs of the ops that ran, result)."""
    with FlopCounterMode(display=False) as counter:
        result = fn(*args, **kwargs)
    return counter.get_total_flops() // 2, result


@torch.no_grad()
def count_macs(module: nn.Module, *inputs: torch.Tensor, depth: int | None = None) -> CostReport:
    """Count the MACs of `module(*inputs)` in eval mode, with a per-module breakdown.

    `depth` limits the breakdown to module names with at most that many dots (None: leaf modules).
    """
    was_training = module.training
    module.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            module(*inputs)
    finally:
        module.train(was_training)
    root = type(module).__name__
    flops_by_name = {
        name[len(root) + 1 :]: sum(ops.values())
        for name, ops in counter.get_flop_counts().items()
        if name.startswith(root + ".")
    }
    modules = dict(module.named_modules())
    if depth is None:
        names = [name for name, sub in modules.items() if name and not list(sub.children())]
    else:
        names = [name for name in modules if name and name.count(".") < depth]
    rows = [
        ModuleCost(name, flops_by_name.get(name, 0) // 2, count_params(modules[name]))
        for name in names
        if flops_by_name.get(name, 0) or count_params(modules[name])
    ]
    batch = inputs[0].shape[0] if inputs and inputs[0].dim() > 0 else 1
    return CostReport(counter.get_total_flops() // 2, count_params(module), batch, rows)
