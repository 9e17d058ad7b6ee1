"""Knowledge distillation from a trained model (Hinton et al. 2015): the loss and the training wrapper.

The CP-CNN distils its clustifier and heads from the backbone's cached logits; the MS-CNN and the
compute-matched static ResNet can learn from the user's model on the images themselves (`WithTeacher`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dynacnn.errors import ConfigError
from dynacnn.models.external import first_conv, load_backbone
from dynacnn.runs import RUNTIME_OPTIONS, load_run, weights_digest
from dynacnn.train import final_logits

DEFAULT_DISTILL = 0.5
"""Weight of the teacher's softened logits in a student's loss (the CP-CNN's heads use the same)."""
KD_TEMPERATURE = 2.0
"""The CP-CNN's temperature (its heads learn from cached logits restricted to their members)."""
IMAGE_KD_TEMPERATURE = 4.0
"""The temperature for whole-image students (MS-CNN, static ResNet): on the demo's calibration split 4 beat 2
(MS-CNN at 3 M MACs: 92.45% against 92.18%; docs/results.md)."""


def check_distill(distill: object) -> float:
    """`distill` if it is a number in (0, 1), the teacher's share of a loss; else a `ConfigError` naming --distill."""
    if isinstance(distill, bool) or not isinstance(distill, (int, float)) or not 0 < distill < 1:
        raise ConfigError(f"--distill {distill!r} must be a number in (0, 1): the teacher's share of the loss")
    return float(distill)


def distillation_loss(
    weight: float, temperature: float = KD_TEMPERATURE
) -> Callable[[tuple[torch.Tensor, torch.Tensor], torch.Tensor], torch.Tensor]:
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


class WithTeacher(nn.Module):
    """Training wrapper: forward(x) -> (student(x), teacher logits on x). The teacher is frozen and stays in eval
    mode (its parameters never reach the optimiser: `fit` trains only parameters that require gradients)."""

    def __init__(self, student: nn.Module, teacher: nn.Module) -> None:
        super().__init__()
        self.student = student
        self.teacher = teacher.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> WithTeacher:
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, x: torch.Tensor) -> tuple[Any, torch.Tensor]:
        with torch.no_grad():
            teacher = self.teacher(x).float()
        return self.student(x), teacher


def with_teacher(
    student: nn.Module, teacher: nn.Module | None, distill: float, loss: Callable | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """What `fit` trains and its loss_fn / logits_fn: `student` alone (`loss`) without a teacher, else
    `WithTeacher(student, teacher)` scored on the student's logits, its loss `loss` or `distillation_loss(distill)`
    at `IMAGE_KD_TEMPERATURE`."""
    if teacher is None:
        return student, {"loss_fn": loss}
    scoring = {
        "loss_fn": loss or distillation_loss(distill, IMAGE_KD_TEMPERATURE),
        "logits_fn": lambda outputs: final_logits(outputs[0]),
    }
    return WithTeacher(student, teacher), scoring


def _without_runtime(data_spec: dict[str, Any]) -> dict[str, Any]:
    options = {k: v for k, v in (data_spec.get("options") or {}).items() if k not in RUNTIME_OPTIONS}
    return {**data_spec, "options": options}


def teacher_digest(run_dir: str | Path) -> str:
    """The `weights_digest` of a run's model (the SHA-256 of the model.safetensors dynacnn wrote): what a resume or a
    reuse compares (the run may move)."""
    return weights_digest(load_run(run_dir).model)


def load_teacher(
    teacher: str | Path | None,
    data_spec: dict[str, Any],
    *,
    arch: str | None = None,
    input_shape: tuple[int, ...] | None = None,
    num_classes: int | None = None,
) -> tuple[nn.Module | None, str | None]:
    """The teacher and the SHA-256 of its weights; (None, None) without one.

    Without `arch`, `teacher` is a `dynacnn train` run, refused unless it was trained on the same data and split as
    `data_spec` (a `DataSpec` as a dict): a teacher that trained on the student's calibration images would leak them
    into every choice made there. With `arch`, `teacher` is the user's checkpoint of that architecture (its training
    data cannot be checked, as for a CP-CNN's --checkpoint); its classes and channels must be `num_classes` and
    `input_shape`'s."""
    if teacher is None:
        if arch is not None:
            raise ConfigError(f"--teacher-arch {arch} needs --teacher FILE, the checkpoint of that architecture")
        return None, None
    if arch is not None:
        model = load_backbone(arch, Path(teacher), num_classes).eval()
        channels = first_conv(model).in_channels
        if input_shape is not None and channels != input_shape[0]:
            raise ConfigError(
                f"--teacher {teacher} takes {channels}-channel images but the data has {input_shape[0]}; "
                "pass a checkpoint trained on this data"
            )
        return model, weights_digest(model)
    run = load_run(teacher)
    theirs, ours = _without_runtime(asdict(run.data_spec)), _without_runtime(data_spec)
    if theirs != ours:
        differing = ", ".join(key for key in ours if theirs.get(key) != ours[key])
        raise ConfigError(
            f"--teacher {teacher} was trained on other data or another split ({differing} differ); train the "
            "teacher with the same --data, --seed and calibration fraction, or leave --teacher out"
        )
    return run.model, weights_digest(run.model)
