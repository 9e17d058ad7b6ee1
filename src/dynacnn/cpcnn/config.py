"""CPCNNConfig: every setting of a CP-CNN conversion, validated in one place; `to_dict()` is the resume identity."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from dynacnn.cpcnn.compress import check_split
from dynacnn.cpcnn.policy import DEFAULT_RULE, DEFAULT_WEIGHTING, check_policy, check_tau
from dynacnn.errors import ConfigError
from dynacnn.models.layout import MEMORY_FORMATS
from dynacnn.train import check_max_drop

DEFAULT_EPOCHS = 8
"""Epochs for the clustifier and each head (6 epochs lost 0.23 points of test top-1 at S = layer1; docs/results.md)."""
DISTILL = 0.5
"""Weight of the distillation term in the clustifier's loss (target: the backbone's summed hyper-class probability)."""
HEAD_DISTILL = 0.5
"""Weight of the distillation term in each head's loss (teacher: the backbone's logits restricted to the members)."""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class CPCNNConfig:
    """How to convert a trained ResNet into a CP-CNN (`convert`, `dynacnn cpcnn`).

    `tau` fixes Alg. 1's threshold (None: the cheapest tau that meets `max_drop`, in points of calibration top-1);
    `split` ends the shared part S (None: swept); `configs` fixes head configurations ("C0:L22,C1:L33,clustifier:LC")
    or lists candidates ("L22,L33"); `n_clusters` fixes the hyper-class count (None: Alg. 2's eigengap);
    `memory_format` "auto" keeps the faster layout by timing.
    """

    tau: float | None = None
    max_drop: float = 0.5
    split: str | None = None
    configs: str | None = None
    n_clusters: int | None = None
    epochs: int = DEFAULT_EPOCHS
    quick: bool = False
    seed: int = 0
    rule: str = DEFAULT_RULE
    weighting: str = DEFAULT_WEIGHTING
    feature_copies: int = 1
    lr: float = 0.05
    distill: float = DISTILL
    head_distill: float = HEAD_DISTILL
    head_tolerance: float | None = None
    memory_format: str = "auto"

    def validate(self, num_classes: int | None = None) -> "CPCNNConfig":
        """Every range check; `num_classes` (the data's) bounds `n_clusters`. Returns self."""
        if self.tau is not None:
            check_tau(self.tau)
        check_policy(self.rule, self.weighting)
        check_max_drop(self.max_drop, "max_drop")
        if self.split is not None:
            check_split(self.split)
        if self.configs is not None and not isinstance(self.configs, str):
            raise ConfigError(f"configs {self.configs!r} must be a string such as 'L22,L33' or 'C0:L22,C1:L33,clustifier:LC'")
        if self.n_clusters is not None:
            upper = num_classes if num_classes is not None else self.n_clusters
            if not isinstance(self.n_clusters, int) or isinstance(self.n_clusters, bool) or not 2 <= self.n_clusters <= upper:
                raise ConfigError(f"--clusters {self.n_clusters!r} must be a whole number of hyper-classes in "
                                  f"[2, {num_classes if num_classes is not None else 'the class count'}] (the data's class "
                                  "count), or left out for the eigengap's choice")
        if not isinstance(self.epochs, int) or isinstance(self.epochs, bool) or self.epochs < 1:
            raise ConfigError(f"--epochs {self.epochs!r} must be a whole number of at least 1")
        if not _is_number(self.lr) or self.lr <= 0:
            raise ConfigError(f"lr {self.lr!r} must be a positive number")
        for label, weight in (("distill", self.distill), ("head_distill", self.head_distill)):
            if not _is_number(weight) or not 0 <= weight <= 1:
                raise ConfigError(f"{label} {weight!r} must be a weight in [0, 1] (0: plain cross-entropy)")
        if self.head_tolerance is not None and (not _is_number(self.head_tolerance) or not 0 <= self.head_tolerance <= 100):
            raise ConfigError(f"head_tolerance {self.head_tolerance!r} must be a number of percentage points in [0, 100], or None")
        if self.memory_format != "auto" and self.memory_format not in MEMORY_FORMATS:
            raise ConfigError(f"memory_format {self.memory_format!r} must be auto, {' or '.join(MEMORY_FORMATS)}")
        if not isinstance(self.feature_copies, int) or isinstance(self.feature_copies, bool) or self.feature_copies < 1:
            raise ConfigError(f"feature_copies {self.feature_copies!r} must be a positive integer")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able settings: what run directories record and what a resume must match."""
        return asdict(self)
