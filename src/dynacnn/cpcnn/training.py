"""Training the clustifier M and the hyper-class heads H_g on S's outputs, S frozen (§3.1, Table 1 flow).

S's outputs come cached or recomputed per batch (`cache.CachedSplit`, `cache.RecomputedSplit`); both train the
same components (the same batches in the same order when augmentation is off).

Each finished component is saved (safetensors + JSON with its identity) under `out/components`; a re-run with
`resume` reuses those whose identity matches and continues interrupted training from its checkpoint. The
clustifier is distilled from the backbone's hyper-class probabilities (`CPCNNConfig.distill`), each head from the
backbone's logits restricted to its members (`CPCNNConfig.head_distill`).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dynacnn.cpcnn.cache import CachedSplit, RecomputedSplit
from dynacnn.cpcnn.compress import build_head
from dynacnn.cpcnn.config import CPCNNConfig
from dynacnn.distill import distillation_loss
from dynacnn.io import ensure_dir, read_json, write_json
from dynacnn.models.layout import memory_format_of
from dynacnn.runs import load_weights, save_weights, weights_digest
from dynacnn.train import Batches, TrainConfig, fit, topk_accuracy

MIN_ONECYCLE_STEPS = 16
"""Fewer optimiser steps than this train with the cosine schedule: OneCycleLR divides by zero on a handful."""


class Distilled(nn.Module):
    """Training wrapper: the student's logits next to the teacher's (the backbone's), for `distillation_loss`."""

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.student = student

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        features, teacher = inputs
        return self.student(features), teacher


def component_key(split: str, role: str, config: str) -> str:
    """The file name of a trained component: e.g. layer1-clustifier-LC, layer1-h0-L22."""
    return f"{split}-{role}-{config}"


def train_component(
    module: nn.Module,
    key: str,
    train: Batches,
    calib: tuple[CachedSplit | RecomputedSplit, torch.Tensor | None, torch.Tensor],
    out: Path,
    config: TrainConfig,
    identity: dict[str, Any],
    device: torch.device,
    resume: bool,
    reuse: bool = False,
    distill: float = 0.0,
) -> dict[str, Any]:
    """Train one head or clustifier on S's outputs, or reuse a finished one (`reuse`) with the same identity.

    `train` gives batches of S's outputs (`training_batches` of a cached or recomputed split), as (features, teacher
    logits) pairs when `distill` > 0 (the loss then mixes in distillation from the backbone, `distillation_loss`);
    `calib` is (source, positions in it or None for all, targets) for the calibration top-1.
    """
    folder = ensure_dir(out / "components")
    weights, meta_path = folder / f"{key}.safetensors", folder / f"{key}.json"
    if (resume or reuse) and meta_path.exists() and weights.exists():
        meta = read_json(meta_path)
        if meta.get("identity") == identity:
            load_weights(weights, module)
            return meta
    started = time.perf_counter()
    if train.num_samples:
        if config.epochs * -(-train.num_samples // config.batch_size) < MIN_ONECYCLE_STEPS:
            config = replace(config, schedule="cosine")
        batches = replace(train, batch_size=config.batch_size, memory_format=memory_format_of(module))
        common = {"run_dir": folder / key, "resume": resume, "device": device, "identity": identity, "desc": key}
        if distill > 0:
            loss = distillation_loss(distill)
            fit(Distilled(module), batches, config, loss_fn=loss, logits_fn=lambda outputs: outputs[0], **common)
        else:
            fit(module, batches, config, **common)
    module.eval()
    source, positions, targets = calib
    logits = source.outputs([module], device, positions)[0]
    top1 = float((logits.argmax(1) == targets).float().mean()) if len(targets) else 0.0
    meta = {
        "identity": identity,
        "calib_top1": top1,
        "calib_top5": topk_accuracy(logits, targets, 5) if len(targets) else 0.0,
        "calib_images": len(targets),
        "train_seconds": time.perf_counter() - started,
    }
    save_weights(weights, module)
    write_json(meta_path, meta)
    return meta


def hyper_class_teacher(members: Sequence[Sequence[int]]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The backbone's hyper-class log-probabilities from its logits: log of its summed member probabilities."""

    def teacher(logits: torch.Tensor) -> torch.Tensor:
        log_probs = torch.log_softmax(logits, dim=-1)
        return torch.stack([torch.logsumexp(log_probs[..., list(group)], dim=-1) for group in members], dim=-1)

    return teacher


def restricted_teacher(group: Sequence[int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The backbone's logits restricted to the classes of `group`."""
    return lambda logits: logits[..., list(group)]


def group_index(members: Sequence[Sequence[int]], num_classes: int) -> torch.Tensor:
    """(num_classes,) hyper-class index of each class."""
    group_of = torch.empty(num_classes, dtype=torch.long)
    for g, group in enumerate(members):
        group_of[list(group)] = g
    return group_of


@dataclass
class ComponentTrainer:
    """Builds and trains the clustifier and the heads of one conversion on S's outputs (cached or recomputed)."""

    backbone: nn.Module
    input_shape: tuple[int, ...]
    memory_format: torch.memory_format
    members: list[list[int]]
    out: Path
    config: CPCNNConfig
    device: torch.device
    resume: bool
    finished: set[str] = field(default_factory=set)
    """Clustifiers trained in this process: a later request for the same one reuses it (if its identity matches)."""

    @property
    def train_config(self) -> TrainConfig:
        return self.config.train_config()

    @cached_property
    def backbone_sha256(self) -> str:
        """The backbone's `weights_digest`: components trained on another backbone's S are not reused."""
        return weights_digest(self.backbone)

    @property
    def group_of(self) -> torch.Tensor:
        return group_index(self.members, self.backbone.fc.out_features)

    def make_head(self, split: str, name: str, outputs: int, classes: Sequence[int] | None = None) -> nn.Module:
        """A head or clustifier whose new layers are initialised from a seed of its own (not the global RNG's
        history), so a resumed run that reuses finished components builds the others exactly as before."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed * 1_000_003 + zlib.crc32(f"{split}/{name}/{outputs}/{classes}".encode()))
            head = build_head(self.backbone, split, name, outputs, self.input_shape, classes)
            device = next(self.backbone.parameters()).device
            return head.to(device=device, memory_format=self.memory_format)

    def _identity(
        self, split: str, role: str, name: str, members: list, copies: int, train: Batches, distill: float
    ) -> dict[str, Any]:
        """What a finished component must match to be reused: its place, classes, training data and settings."""
        return {
            "split": split,
            "role": role,
            "config": name,
            "members": members,
            "train": self.train_config.to_dict(),
            "copies": copies,
            "train_images": train.num_samples,
            "distill": distill,
            "backbone_sha256": self.backbone_sha256,
        }

    def train_part(
        self,
        module: nn.Module,
        key: str,
        train: Batches,
        calib: tuple[CachedSplit | RecomputedSplit, torch.Tensor | None, torch.Tensor],
        identity: dict[str, Any],
        distill: float,
        reuse: bool = False,
    ) -> dict[str, Any]:
        """`train_component` with this conversion's output directory, recipe, device and resume setting."""
        return train_component(
            module, key, train, calib, self.out, self.train_config, identity, self.device, self.resume, reuse, distill
        )

    def clustifier(
        self, split: str, name: str, cache: dict[str, CachedSplit | RecomputedSplit]
    ) -> tuple[nn.Module, dict[str, Any]]:
        """M with configuration `name`, trained to predict the hyper-class (distilled from the backbone's)."""
        module = self.make_head(split, name, len(self.members))
        group_of, source = self.group_of, cache["train"]
        distill = self.config.distill if source.has_teacher else 0.0
        teacher = hyper_class_teacher(self.members) if distill > 0 else None
        train = source.training_batches(group_of, teacher, None, self.train_config.batch_size, self.memory_format)
        calib = (cache["calib"], None, group_of[cache["calib"].labels])
        key = component_key(split, "clustifier", name)
        identity = self._identity(split, "clustifier", name, self.members, source.copies, train, self.config.distill)
        record = self.train_part(module, key, train, calib, identity, distill, reuse=key in self.finished)
        self.finished.add(key)
        return module, record

    def heads(
        self, split: str, g: int, names: Sequence[str], cache: dict[str, CachedSplit | RecomputedSplit]
    ) -> dict[str, tuple[nn.Module, dict[str, Any]]]:
        """H_g in each configuration of `names`, trained on the images of hyper-class g (labels local to it)."""
        group, source = self.members[g], cache["train"]
        in_train = torch.nonzero(torch.isin(source.labels, torch.tensor(group))).flatten()
        local = torch.full((self.backbone.fc.out_features,), -1, dtype=torch.long)
        local[group] = torch.arange(len(group))
        distill = self.config.head_distill if source.has_teacher else 0.0
        teacher = restricted_teacher(group) if distill > 0 else None
        train = source.training_batches(local, teacher, in_train, self.train_config.batch_size, self.memory_format)
        in_calib = torch.nonzero(self.group_of[cache["calib"].labels] == g).flatten()
        calib = (cache["calib"], in_calib, local[cache["calib"].labels[in_calib]])
        trained = {}
        for name in names:
            module = self.make_head(split, name, len(group), group)
            identity = self._identity(split, f"h{g}", name, group, source.copies, train, self.config.head_distill)
            key = component_key(split, f"h{g}", name)
            trained[name] = (module, self.train_part(module, key, train, calib, identity, distill))
        return trained
