"""Training the clustifier M and the hyper-class heads H_g on cached S outputs, S frozen (§3.1, Table 1 flow).

Each finished component is saved (safetensors + JSON with its identity) under `out/components`; a re-run with
`resume` reuses those whose identity matches and continues interrupted training from its checkpoint. The
clustifier is distilled from the backbone's hyper-class probabilities (`CPCNNConfig.distill`), each head from the
backbone's logits restricted to its members (`CPCNNConfig.head_distill`).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dynacnn.cpcnn.cache import CachedSplit, FeatureBatches, batched_outputs
from dynacnn.cpcnn.compress import build_head
from dynacnn.cpcnn.config import CPCNNConfig
from dynacnn.io import ensure_dir, read_json, write_json
from dynacnn.models.layout import memory_format_of
from dynacnn.runs import load_weights, save_weights
from dynacnn.train import TrainConfig, fit

KD_TEMPERATURE = 2.0
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


def distillation_loss(
    weight: float, temperature: float = KD_TEMPERATURE
) -> Callable[[Any, torch.Tensor], torch.Tensor]:
    """(1 - weight) * cross-entropy + weight * T^2 * KL(teacher || student) at temperature T (Hinton et al. 2015)."""

    def loss(outputs: tuple[torch.Tensor, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        logits, teacher = outputs
        hard = nn.functional.cross_entropy(logits, labels)
        soft = nn.functional.kl_div(
            nn.functional.log_softmax(logits / temperature, dim=1),
            nn.functional.log_softmax(teacher / temperature, dim=1),
            log_target=True,
            reduction="batchmean",
        )
        return (1 - weight) * hard + weight * temperature**2 * soft

    return loss


def component_key(split: str, role: str, config: str) -> str:
    """The file name of a trained component: e.g. layer1-clustifier-LC, layer1-h0-L22."""
    return f"{split}-{role}-{config}"


def train_component(
    module: nn.Module,
    key: str,
    train: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
    calib: tuple[torch.Tensor, torch.Tensor],
    out: Path,
    config: TrainConfig,
    identity: dict[str, Any],
    device: torch.device,
    resume: bool,
    reuse: bool = False,
    distill: float = 0.0,
) -> dict[str, Any]:
    """Train one head or clustifier on cached S outputs, or reuse a finished one (`reuse`) with the same identity.

    `train` is (features (copies, N, ...), labels, teacher logits (copies, N, C) or None); with a teacher and
    `distill` > 0 the loss mixes in distillation from the backbone (`distillation_loss`).
    """
    folder = ensure_dir(out / "components")
    weights, meta_path = folder / f"{key}.safetensors", folder / f"{key}.json"
    if (resume or reuse) and meta_path.exists() and weights.exists():
        meta = read_json(meta_path)
        if meta.get("identity") == identity:
            load_weights(weights, module)
            return meta
    started = time.perf_counter()
    if len(train[1]):
        if config.epochs * -(-len(train[1]) // config.batch_size) < MIN_ONECYCLE_STEPS:
            config = replace(config, schedule="cosine")
        features, labels, teacher = train
        distilled = teacher is not None and distill > 0
        fmt = memory_format_of(module)
        batches = FeatureBatches(features, labels, teacher if distilled else None, config.batch_size, memory_format=fmt)
        common = {"run_dir": folder / key, "resume": resume, "device": device, "identity": identity, "desc": key}
        if distilled:
            loss = distillation_loss(distill)
            fit(Distilled(module), batches, config, loss_fn=loss, logits_fn=lambda outputs: outputs[0], **common)
        else:
            fit(module, batches, config, **common)
    module.eval()
    logits = batched_outputs(module, calib[0].to(device)).cpu()
    top1 = float((logits.argmax(1) == calib[1]).float().mean()) if len(calib[1]) else 0.0
    meta = {
        "identity": identity,
        "calib_top1": top1,
        "calib_images": len(calib[1]),
        "train_seconds": time.perf_counter() - started,
    }
    save_weights(weights, module)
    write_json(meta_path, meta)
    return meta


def group_index(members: Sequence[Sequence[int]], num_classes: int) -> torch.Tensor:
    """(num_classes,) hyper-class index of each class."""
    group_of = torch.empty(num_classes, dtype=torch.long)
    for g, group in enumerate(members):
        group_of[list(group)] = g
    return group_of


@dataclass
class ComponentTrainer:
    """Builds and trains the clustifier and the heads of one conversion, on cached S outputs at any split."""

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

    @property
    def group_of(self) -> torch.Tensor:
        return group_index(self.members, self.backbone.fc.out_features)

    def make_head(self, split: str, name: str, outputs: int, classes: Sequence[int] | None = None) -> nn.Module:
        """A head or clustifier whose new layers are initialised from a seed of its own (not the global RNG's
        history), so a resumed run that reuses finished components builds the others exactly as before."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed * 1_000_003 + zlib.crc32(f"{split}/{name}/{outputs}/{classes}".encode()))
            head = build_head(self.backbone, split, name, outputs, self.input_shape, classes)
            return head.to(memory_format=self.memory_format)

    def _identity(
        self, split: str, role: str, name: str, members: list, train: tuple, distill: float
    ) -> dict[str, Any]:
        """What a finished component must match to be reused: its place, classes, training data and settings."""
        return {
            "split": split,
            "role": role,
            "config": name,
            "members": members,
            "train": asdict(self.train_config),
            "copies": int(train[0].shape[0]),
            "train_images": len(train[1]),
            "distill": distill,
        }

    def clustifier(self, split: str, name: str, cache: dict[str, CachedSplit]) -> tuple[nn.Module, dict[str, Any]]:
        """M with configuration `name`, trained to predict the hyper-class (distilled from the backbone's)."""
        module = self.make_head(split, name, len(self.members))
        group_of = self.group_of
        teacher = cache["train"].teacher
        if teacher is not None:  # the backbone's hyper-class log-probabilities: log of its summed member probabilities
            log_probs = torch.log_softmax(teacher, dim=-1)
            teacher = torch.stack([torch.logsumexp(log_probs[..., group], dim=-1) for group in self.members], dim=-1)
        train = (cache["train"].features, group_of[cache["train"].labels], teacher)
        calib = (cache["calib"].features, group_of[cache["calib"].labels])
        key = component_key(split, "clustifier", name)
        identity = self._identity(split, "clustifier", name, self.members, train, self.config.distill)
        reuse = key in self.finished
        record = train_component(
            module,
            key,
            train,
            calib,
            self.out,
            self.train_config,
            identity,
            self.device,
            self.resume,
            reuse,
            self.config.distill,
        )
        self.finished.add(key)
        return module, record

    def heads(
        self, split: str, g: int, names: Sequence[str], cache: dict[str, CachedSplit]
    ) -> dict[str, tuple[nn.Module, dict[str, Any]]]:
        """H_g in each configuration of `names`, trained on the images of hyper-class g (labels local to it)."""
        group = self.members[g]
        labels = cache["train"].labels
        in_train = torch.isin(labels, torch.tensor(group))
        local = torch.full((self.backbone.fc.out_features,), -1, dtype=torch.long)
        local[group] = torch.arange(len(group))
        teacher = cache["train"].teacher
        teacher = None if teacher is None or self.config.head_distill == 0 else teacher[:, in_train][..., group]
        train = (cache["train"].features[:, in_train], local[labels[in_train]], teacher)
        in_calib = self.group_of[cache["calib"].labels] == g
        calib = (cache["calib"].features[in_calib], local[cache["calib"].labels[in_calib]])
        trained = {}
        for name in names:
            module = self.make_head(split, name, len(group), group)
            identity = self._identity(split, f"h{g}", name, group, train, self.config.head_distill)
            key = component_key(split, f"h{g}", name)
            record = train_component(
                module,
                key,
                train,
                calib,
                self.out,
                self.train_config,
                identity,
                self.device,
                self.resume,
                distill=self.config.head_distill,
            )
            trained[name] = (module, record)
        return trained
