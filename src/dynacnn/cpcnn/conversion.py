"""`Conversion`: the state one CP-CNN conversion (`pipeline.convert`) carries from step to step."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dynacnn.cpcnn.cache import CachedSplit, RecomputedSplit
from dynacnn.cpcnn.config import CPCNNConfig
from dynacnn.cpcnn.explore import SplitView, Timing
from dynacnn.cpcnn.model import CPCNN
from dynacnn.cpcnn.training import ComponentTrainer
from dynacnn.flops import count_macs


@dataclass
class Conversion:
    """One `convert`: its inputs, then what each step adds (empty until that step has run)."""

    backbone: nn.Module
    data: Any
    out: Path
    config: CPCNNConfig
    device: torch.device
    resume: bool
    spec: dict[str, Any]
    timing: Timing
    format_name: str
    format_speed: dict[str, float]
    base: dict[str, Any] = field(default_factory=dict)
    clusters: dict[str, Any] = field(default_factory=dict)
    cal: SplitView | None = None
    trainer: ComponentTrainer | None = None
    split_rows: list[dict[str, Any]] = field(default_factory=list)
    split: str = ""
    shared: nn.Module | None = None
    cache: dict[str, CachedSplit | RecomputedSplit] = field(default_factory=dict)
    features: dict[str, Any] = field(default_factory=dict)
    """How S's outputs were kept: the budget, bytes per part and each part's mode ("cache" or "recompute")."""
    table1: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    clustifier_name: str = ""
    clustifier: nn.Module | None = None
    v: dict[str, torch.Tensor] = field(default_factory=dict)
    confusion: torch.Tensor | None = None
    heads: list[dict[str, tuple[nn.Module, torch.Tensor]]] = field(default_factory=list)
    """Per hyper-class: {configuration: (trained head, its calibration probabilities)}."""
    model: CPCNN | None = None
    rows: dict[str, Any] = field(default_factory=dict)
    clustifier_skipped: dict[str, str] = field(default_factory=dict)
    """Clustifier candidates not trained at the split, each with the reason (L44 needs split stem)."""

    @property
    def members(self) -> list[list[int]]:
        return self.cal.members

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.data.info.input_shape)

    def macs(self, module: nn.Module) -> int:
        """MACs per image of a head or clustifier on S's output."""
        return count_macs(module, self.cache["calib"].example(self.device)).macs
