"""MSCNNRunConfig: every setting of an MS-CNN run (`run_mscnn`, `dynacnn mscnn`) but its data, device and resume flag."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from dynacnn.distill import check_distill
from dynacnn.errors import ConfigError
from dynacnn.mscnn.execute import FC_ROWS
from dynacnn.mscnn.model import MSCNNConfig
from dynacnn.mscnn.training import TRAINING_MODES
from dynacnn.train import PRECISIONS, check_max_drop

DEFAULT_EPOCHS = 8
DEFAULT_STAGES = 4
DEFAULT_RANK_IMAGES = 10000


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class MSCNNRunConfig:
    """How to train, analyse and choose an MS-CNN.

    `max_drop`: the largest calibration top-1 drop against the full MS-CNN, in percentage points, counting `drop_z`
    standard errors of the paired per-image difference; `fc_rows`: how the chosen policy executes pruned FC rows
    ("batch": the rows any image of a sub-batch keeps; "image": each image's own); `augment` (crop + flip) is off by
    default: in 8 epochs these small networks underfit Fashion-MNIST and augmentation only slows them down;
    `rank_images`: training images (a stratified subset fixed by `seed`) CAP_CONV's filter ranking is fitted on;
    `precision`: the training loop's (`TrainConfig.precision`); `mode`: "joint" (every stage's loss at once) or "stagewise"; `model` fixes the architecture (default:
    `default_config(stages)` for the data's channels and classes); `quick` sweeps and times less; `distill`: the
    weight of the teacher's logits in every stage's loss (`dynacnn.distill`; `run_mscnn`'s `teacher` names the
    teacher run, outside the settings as the data directory is: a moved run is the same teacher), None without one.
    """

    epochs: int = DEFAULT_EPOCHS
    max_drop: float = 0.5
    fc_rows: str = "batch"
    augment: bool = False
    quick: bool = False
    seed: int = 0
    batch_size: int = 128
    lr: float = 0.1
    mode: str = "joint"
    drop_z: float = 2.0
    stages: int | None = None
    model: MSCNNConfig | None = None
    precision: str = "fp32"
    rank_images: int = DEFAULT_RANK_IMAGES
    distill: float | None = None

    def validate(self) -> MSCNNRunConfig:
        """Every range check, before anything is read or written. Returns self."""
        check_max_drop(self.max_drop, "--max-drop")
        if self.fc_rows not in FC_ROWS:
            raise ConfigError(f"--fc-rows {self.fc_rows!r} must be one of {', '.join(FC_ROWS)}")
        if not _is_whole(self.epochs) or self.epochs < 1:
            raise ConfigError(f"--epochs {self.epochs!r} must be a whole number of at least 1")
        for name, flag in (("--augment", self.augment), ("quick", self.quick)):
            if not isinstance(flag, bool):
                raise ConfigError(f"{name} {flag!r} must be True or False")
        if not _is_whole(self.seed):
            raise ConfigError(f"--seed {self.seed!r} must be a whole number")
        if not _is_whole(self.batch_size) or self.batch_size < 1:
            raise ConfigError(f"batch_size {self.batch_size!r} must be a whole number of at least 1")
        if not _is_number(self.lr) or self.lr <= 0:
            raise ConfigError(f"lr {self.lr!r} must be a positive number")
        if not _is_whole(self.rank_images) or self.rank_images < 1:
            raise ConfigError(f"rank_images {self.rank_images!r} must be a whole number of training images, at least 1")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown --precision {self.precision!r}; use one of {', '.join(PRECISIONS)}")
        if self.mode not in TRAINING_MODES:
            raise ConfigError(f"mode {self.mode!r} is not a training mode; use one of {', '.join(TRAINING_MODES)}")
        if self.distill is not None:
            check_distill(self.distill)
        if not _is_number(self.drop_z) or self.drop_z < 0:
            raise ConfigError(f"drop_z {self.drop_z!r} must be a non-negative number of standard errors")
        if self.stages is not None and (not _is_whole(self.stages) or self.stages < 2):
            raise ConfigError(f"--stages {self.stages!r} must be a whole number of at least 2")
        if self.model is not None:
            if not isinstance(self.model, MSCNNConfig):
                raise ConfigError(f"model must be an MSCNNConfig or None, got {type(self.model).__name__}")
            try:
                self.model.validate()
            except ConfigError as exc:
                raise ConfigError(f"model: {exc}") from None
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able settings: what mscnn.json records as "settings" and what the demo's resume compares
        (fp32 leaves `precision` out, as `TrainConfig.to_dict` does, and no `distill` leaves it out: runs made before
        the option keep their identity)."""
        settings = {**asdict(self), "model": None if self.model is None else self.model.to_dict()}
        if self.precision == "fp32":
            del settings["precision"]
        if self.distill is None:
            del settings["distill"]
        return settings

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MSCNNRunConfig:
        """The config `to_dict` (or its JSON) describes."""
        model = data.get("model")
        return cls(**{**data, "model": None if model is None else MSCNNConfig.from_dict(model)})
