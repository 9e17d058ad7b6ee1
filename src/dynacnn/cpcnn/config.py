"""CPCNNConfig: every setting of a CP-CNN conversion, validated in one place; `to_dict()` is the resume identity."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from dynacnn.cpcnn.compress import CONFIGURATIONS, available_configurations, check_split
from dynacnn.cpcnn.policy import AUTO, check_policy, check_tau
from dynacnn.data.stream import available_memory
from dynacnn.errors import ConfigError
from dynacnn.models.layout import MEMORY_FORMATS
from dynacnn.train import PRECISIONS, TrainConfig, check_max_drop

DEFAULT_EPOCHS = 8
"""Epochs for the clustifier and each head (6 epochs lost 0.23 points of test top-1 at S = layer1; docs/results.md)."""
DISTILL = 0.5
"""Weight of the distillation term in the clustifier's loss (target: the backbone's summed hyper-class probability)."""
HEAD_DISTILL = 0.5
"""Weight of the distillation term in each head's loss (teacher: the backbone's logits restricted to the members)."""
QUICK_TRAIN_IMAGES = 1000
"""With `quick`: the clustifier and heads train one epoch on a stratified subset of this many images."""
FEATURE_FRACTION = 0.5
"""`feature_memory="auto"`: S's outputs may take this fraction of the memory available when they are cached (the
rest is head training's copies of a hyper-class's outputs, batches and the data)."""
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
MEMORY_FIX = "use 'auto', a number of bytes or a size such as 8GB or 512MiB (0: recompute S for every batch)"


def parse_memory(value: Any) -> int | None:
    """Bytes of a memory size: an int >= 0 or a string such as "8GB", "1.5 GiB", "512MiB", "4096"; "auto" -> None."""
    if value == "auto":
        return None
    if _is_whole(value) and value >= 0:
        return value
    match = (
        re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*", value, re.IGNORECASE) if isinstance(value, str) else None
    )
    if match is None:
        raise ConfigError(f"feature_memory {value!r} is not a memory size; {MEMORY_FIX}")
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "").lower()])


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_configs(
    configs: str | Sequence[str] | Mapping[Any, str] | None,
) -> tuple[dict[str, str], tuple[str, ...] | None]:
    """`configs` -> (fixed {"clustifier" | "0" | "1" ...: name}, candidate names or None for all).

    Accepts a mapping (hyper-class index or "clustifier" -> configuration), a list of candidate names, or a
    string: "L1,L22" (candidates) or fixed entries in the paper's notation "C0:L44,C1:L1,clustifier:LC"
    (also "0=L44,1=L1,clustifier=LC").
    """
    if configs is None:
        return {}, None
    if isinstance(configs, str):
        parts = [part.strip().replace("=", ":") for part in configs.split(",") if part.strip()]
        if parts and all(":" in part for part in parts):
            configs = dict(part.split(":", 1) for part in parts)
        elif any(":" in part for part in parts):
            raise ConfigError(f"configs {configs!r} mixes fixed (C0:L1) and candidate (L1) entries; use one form")
        else:
            configs = parts
    if isinstance(configs, Mapping):
        fixed = {str(key).strip(): str(value).strip() for key, value in configs.items()}
        return {key[1:] if key[:1] in "Cc" and key[1:].isdigit() else key: value for key, value in fixed.items()}, None
    names = tuple(configs)
    if not names:
        raise ConfigError("configs is empty; give candidate configuration names such as L1,L22 or leave it out")
    return {}, names


@dataclass(frozen=True)
class CPCNNConfig:
    """How to convert a trained ResNet into a CP-CNN (`convert`, `dynacnn cpcnn`).

    `tau` fixes Alg. 1's threshold (None: the cheapest tau that meets `max_drop`, in points of calibration top-1);
    `split` ends the shared part S (None: swept); `configs` fixes head configurations ("C0:L22,C1:L33,clustifier:LC")
    or lists candidates ("L22,L33"); `n_clusters` fixes the hyper-class count (None: Alg. 2's eigengap);
    `memory_format` "auto" keeps the faster layout by timing. `feature_memory` bounds the memory S's outputs may take
    when cached (bytes, a size such as "8GB", or "auto": `FEATURE_FRACTION` of what is available); the parts that do
    not fit (train, then calibration, then test are cached first) are recomputed from the images per batch.
    `precision` is the clustifier's and heads' training arithmetic (`TrainConfig.precision`). `rule` (Alg. 1's
    "confusion" or our "top") and `weighting` (Eq. 3's "eq3" or "clustifier") fix the policy; "auto" chooses each on
    the calibration split: every allowed combination at its own tau, the cheapest meeting `max_drop`.
    """

    tau: float | None = None
    max_drop: float = 0.5
    split: str | None = None
    configs: str | None = None
    n_clusters: int | None = None
    epochs: int = DEFAULT_EPOCHS
    quick: bool = False
    seed: int = 0
    rule: str = AUTO
    weighting: str = AUTO
    feature_copies: int = 1
    lr: float = 0.05
    distill: float = DISTILL
    head_distill: float = HEAD_DISTILL
    head_tolerance: float | None = None
    memory_format: str = "auto"
    feature_memory: int | str = "auto"
    precision: str = "fp32"

    def validate(self, num_classes: int | None = None) -> CPCNNConfig:
        """Every range check; `num_classes` (the data's) bounds `n_clusters`. Returns self."""
        if self.tau is not None:
            check_tau(self.tau)
        check_policy(self.rule, self.weighting, allow_auto=True)
        check_max_drop(self.max_drop, "max_drop")
        if self.split is not None:
            check_split(self.split)
        if self.configs is not None and not isinstance(self.configs, str):
            raise ConfigError(
                f"configs {self.configs!r} must be a string such as 'L22,L33' or 'C0:L22,C1:L33,clustifier:LC'"
            )
        fixed, candidates = parse_configs(self.configs)
        for name in [*fixed.values(), *(candidates or ())]:
            if name not in CONFIGURATIONS:
                raise ConfigError(
                    f"unknown configuration {name!r} in configs; use names from {', '.join(CONFIGURATIONS)}"
                )
        if self.n_clusters is not None:
            upper = num_classes if num_classes is not None else self.n_clusters
            if not _is_whole(self.n_clusters) or not 2 <= self.n_clusters <= upper:
                raise ConfigError(
                    f"--hyper-classes {self.n_clusters!r} must be a whole number of hyper-classes in "
                    f"[2, {num_classes if num_classes is not None else 'the class count'}] (the data's class "
                    "count), or left out for the eigengap's choice"
                )
        if not _is_whole(self.epochs) or self.epochs < 1:
            raise ConfigError(f"--epochs {self.epochs!r} must be a whole number of at least 1")
        if not isinstance(self.quick, bool):
            raise ConfigError(f"quick {self.quick!r} must be True or False")
        if not _is_whole(self.seed):
            raise ConfigError(f"--seed {self.seed!r} must be a whole number")
        if not _is_number(self.lr) or not 0 < self.lr < math.inf:
            raise ConfigError(f"lr {self.lr!r} must be a positive number")
        for label, weight in (("distill", self.distill), ("head_distill", self.head_distill)):
            if not _is_number(weight) or not 0 <= weight <= 1:
                raise ConfigError(f"{label} {weight!r} must be a weight in [0, 1] (0: plain cross-entropy)")
        if self.head_tolerance is not None and (
            not _is_number(self.head_tolerance) or not 0 <= self.head_tolerance <= 100
        ):
            raise ConfigError(
                f"head_tolerance {self.head_tolerance!r} must be a number of percentage points in [0, 100], or None"
            )
        if not isinstance(self.memory_format, str) or self.memory_format not in ("auto", *MEMORY_FORMATS):
            raise ConfigError(f"memory_format {self.memory_format!r} must be auto, {' or '.join(MEMORY_FORMATS)}")
        if not _is_whole(self.feature_copies) or self.feature_copies < 1:
            raise ConfigError(f"feature_copies {self.feature_copies!r} must be a positive integer")
        parse_memory(self.feature_memory)
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown --precision {self.precision!r}; use one of {', '.join(PRECISIONS)}")
        return self

    def feature_budget(self) -> int:
        """Bytes S's outputs may take when cached: `feature_memory`, or for "auto" `FEATURE_FRACTION` of the memory
        available now."""
        given = parse_memory(self.feature_memory)
        return int(FEATURE_FRACTION * available_memory()) if given is None else given

    @property
    def parsed_configs(self) -> tuple[dict[str, str], tuple[str, ...] | None]:
        """`configs` as (fixed {"clustifier" | "0" | "1" ...: name}, candidate names or None), by `parse_configs`."""
        return parse_configs(self.configs)

    def check_hyper_class_count(self, groups: int) -> None:
        """Refuse `configs` keys that are neither "clustifier" nor one of the `groups` hyper-class indices."""
        for key in self.parsed_configs[0]:
            if key != "clustifier" and (not key.isdigit() or int(key) >= groups):
                raise ConfigError(
                    f"configs key {key!r} is neither 'clustifier' nor a hyper-class index 0..{groups - 1}"
                )

    def check_split_point(self, split: str) -> None:
        """Refuse `configs` names that replace stages before `split` (not available there)."""
        allowed = available_configurations(split)
        fixed, candidates = self.parsed_configs
        for name in [*fixed.values(), *(candidates or ())]:
            if name not in allowed:
                raise ConfigError(
                    f"configuration {name!r} is not available at split {split}; use some of {', '.join(allowed)}"
                )

    def train_config(self) -> TrainConfig:
        """How the clustifier and each head are trained on cached S outputs (one epoch with `quick`)."""
        epochs = 1 if self.quick else self.epochs
        return TrainConfig(
            epochs=epochs, batch_size=128, lr=self.lr, augment=False, seed=self.seed, precision=self.precision
        ).validate()

    @property
    def train_images(self) -> int | None:
        """How many training images the clustifier and heads see (None: all)."""
        return QUICK_TRAIN_IMAGES if self.quick else None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able settings: what run directories record and what a resume must match (fp32 leaves
        `precision` out, as `TrainConfig.to_dict` does)."""
        settings = asdict(self)
        if self.precision == "fp32":
            del settings["precision"]
        return settings
