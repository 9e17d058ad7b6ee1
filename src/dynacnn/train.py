"""The one training loop for every model in the project: SGD + momentum, one-cycle or cosine, checkpoints, resume."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from dynacnn.data import batches
from dynacnn.errors import CheckpointError, ConfigError
from dynacnn.io import atomic_write, ensure_dir, write_json, write_text
from dynacnn.models.layout import safe_backward_layout

CHECKPOINT_VERSION = 1
SCHEDULES = ("onecycle", "cosine")


@dataclass
class TrainConfig:
    """Optimisation settings; stored with every checkpoint so a resume can check it continues the same run."""

    epochs: int = 5
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    label_smoothing: float = 0.0
    augment: bool = True
    seed: int = 0

    def validate(self) -> TrainConfig:
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.lr <= 0:
            raise ConfigError(f"--lr must be positive, got {self.lr}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule {self.schedule!r}; use one of {', '.join(SCHEDULES)}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        return self


class Batches(Protocol):
    """A re-iterable source of (inputs, labels) batches; randomness only from the given generator."""

    num_samples: int

    def __call__(
        self, generator: torch.Generator | None, device: torch.device
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


@dataclass
class ImageBatches:
    """Batches of normalised images from a `dynacnn.data.Split`, optionally shuffled and augmented."""

    split: Any
    info: Any
    batch_size: int = 256
    shuffle: bool = False
    augment: bool = False

    @property
    def num_samples(self) -> int:
        return len(self.split)

    def __call__(
        self, generator: torch.Generator | None, device: torch.device
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return batches(
            self.split,
            self.info,
            self.batch_size,
            shuffle=self.shuffle,
            augment=self.augment,
            generator=generator,
            device=device,
        )


@dataclass
class TensorBatches:
    """Batches of precomputed tensors (e.g. cached shared-layer features) and labels."""

    inputs: torch.Tensor
    labels: torch.Tensor
    batch_size: int = 256
    shuffle: bool = False

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    def __call__(
        self, generator: torch.Generator | None, device: torch.device
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        for start in range(0, n, self.batch_size):
            index = order[start : start + self.batch_size]
            yield self.inputs[index].to(device, non_blocking=True), self.labels[index].to(device, non_blocking=True)


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when available, else CPU; 'cuda' without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ConfigError(f"unknown --device {name!r}; use auto, cpu or cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA device is available; use --device cpu or auto")
    return torch.device(name)


def final_logits(outputs: Any) -> torch.Tensor:
    """The logits to score: the tensor itself, or the last of a list (multi-exit models)."""
    return outputs[-1] if isinstance(outputs, (list, tuple)) else outputs


@torch.no_grad()
def predict(
    model: nn.Module, data: Batches, device: torch.device, logits_fn: Callable[[Any], torch.Tensor] = final_logits
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, K) and labels (N,) for every sample of `data`, on the CPU."""
    model.eval()
    all_logits, all_labels = [], []
    for inputs, labels in data(None, device):
        all_logits.append(logits_fn(model(inputs)).float().cpu())
        all_labels.append(labels.cpu())
    return torch.cat(all_logits), torch.cat(all_labels)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Fraction of samples whose label is among the k highest logits."""
    k = min(k, logits.shape[1])
    hits = (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1)
    return hits.float().mean().item()


def check_max_drop(max_drop: object, option: str = "--max-drop") -> float:
    """The one rule for an accuracy budget: a number of percentage points of top-1 in [0, 100]."""
    if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)) or not 0 <= max_drop <= 100:
        raise ConfigError(f"{option} {max_drop!r} must be a number of percentage points in [0, 100], e.g. 0.5")
    return float(max_drop)


def paired_drop(reference: torch.Tensor, correct: torch.Tensor) -> tuple[float, float]:
    """Top-1 drop from per-image correctness `reference` to `correct` (same images), and its standard error."""
    diff = reference.double() - correct.double()
    return diff.mean().item(), (diff.std(unbiased=False) / len(diff) ** 0.5).item()


def evaluate(
    model: nn.Module, data: Batches, device: torch.device, logits_fn: Callable[[Any], torch.Tensor] = final_logits
) -> dict[str, float]:
    """Top-1, top-5 (fractions) and mean cross-entropy on `data`."""
    logits, labels = predict(model, data, device, logits_fn)
    return {
        "top1": topk_accuracy(logits, labels, 1),
        "top5": topk_accuracy(logits, labels, 5),
        "loss": nn.functional.cross_entropy(logits, labels).item(),
    }


@dataclass
class TrainResult:
    """What `fit` leaves behind: per-epoch history and the final calibration metrics."""

    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}


def _make_optimizer(model: nn.Module, config: TrainConfig, steps_per_epoch: int) -> tuple[torch.optim.Optimizer, Any]:
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() > 1]
    no_decay = [p for p in params if p.dim() <= 1]
    optimizer = torch.optim.SGD(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        momentum=config.momentum,
        nesterov=True,
    )
    total = config.epochs * steps_per_epoch
    if config.schedule == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total, pct_start=0.3)
    else:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    return optimizer, scheduler


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomically write a training checkpoint (format version + config + states)."""
    atomic_write(path, lambda handle: torch.save({"format_version": CHECKPOINT_VERSION, **state}, handle))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint with `weights_only=True` (no arbitrary unpickling)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}; train without --resume first") from None
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a dynacnn checkpoint ({type(exc).__name__}); delete it and re-run"
        ) from None
    if not isinstance(state, dict) or state.get("format_version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"checkpoint {path} has an unknown format version; it was not written by this dynacnn")
    return state


def _train_epoch(
    model: nn.Module,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    criterion: Callable[[Any, torch.Tensor], torch.Tensor],
    logits_fn: Callable[[Any], torch.Tensor],
    steps: int,
    desc: str,
) -> dict[str, float]:
    """One pass of SGD steps over `batches`; returns the epoch's training loss, top-1 and images/s."""
    model.train()
    seen, correct, loss_sum = 0, 0, 0.0
    epoch_start = time.perf_counter()
    bar = tqdm(batches, total=steps, desc=desc, leave=False, disable=None)
    for inputs, labels in bar:
        outputs = model(inputs)
        loss = criterion(outputs, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        batch = labels.shape[0]
        seen += batch
        loss_sum += loss.item() * batch
        correct += (logits_fn(outputs).argmax(1) == labels).sum().item()
        bar.set_postfix(
            loss=f"{loss_sum / seen:.3f}",
            acc=f"{correct / seen:.3f}",
            img_s=f"{seen / (time.perf_counter() - epoch_start):.0f}",
        )
    return {
        "train_loss": loss_sum / max(seen, 1),
        "train_top1": correct / max(seen, 1),
        "images_per_s": seen / (time.perf_counter() - epoch_start),
    }


def fit(
    model: nn.Module,
    train_data: Batches,
    config: TrainConfig,
    *,
    calib_data: Batches | None = None,
    run_dir: str | Path | None = None,
    resume: bool = False,
    device: torch.device | str = "cpu",
    loss_fn: Callable[[Any, torch.Tensor], torch.Tensor] | None = None,
    logits_fn: Callable[[Any], torch.Tensor] = final_logits,
    identity: dict[str, Any] | None = None,
    desc: str = "train",
) -> TrainResult:
    """Train `model` in place; after each epoch evaluate on `calib_data` and checkpoint to `run_dir`.

    `identity` (architecture, data, ...) is stored in the checkpoint; `resume` refuses a checkpoint
    whose identity or config differ, and continues after its last finished epoch. Convolutions that oneDNN
    cannot train in channels_last on the CPU train in NCHW (`safe_backward_layout`); every other layer keeps the
    model's layout.
    """
    config.validate()
    device = torch.device(device) if isinstance(device, str) else device
    model.to(device)
    steps_per_epoch = max(1, -(-train_data.num_samples // getattr(train_data, "batch_size", config.batch_size)))
    optimizer, scheduler = _make_optimizer(model, config, steps_per_epoch)
    criterion = loss_fn or (lambda out, y: nn.functional.cross_entropy(out, y, label_smoothing=config.label_smoothing))
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    result = TrainResult()
    run_path = ensure_dir(run_dir) if run_dir is not None else None
    checkpoint_path = run_path / "checkpoint.pt" if run_path else None
    identity = json.loads(json.dumps(identity or {}))
    start_epoch = 0
    if resume and checkpoint_path is not None and checkpoint_path.exists():
        state = load_checkpoint(checkpoint_path)
        if state.get("config") != asdict(config) or state.get("identity") != identity:
            raise CheckpointError(
                f"checkpoint {checkpoint_path} was made with other settings; re-run with the same options or without --resume"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        result.history = list(state["history"])
        start_epoch = int(state["epoch"])
    started = time.perf_counter()
    with safe_backward_layout(model):
        for epoch in range(start_epoch, config.epochs):
            row = {
                "epoch": epoch + 1,
                **_train_epoch(
                    model,
                    train_data(generator, device),
                    optimizer,
                    scheduler,
                    criterion,
                    logits_fn,
                    steps_per_epoch,
                    f"{desc} {epoch + 1}/{config.epochs}",
                ),
            }
            if calib_data is not None:
                metrics = evaluate(model, calib_data, device, logits_fn)
                row.update({f"calib_{key}": value for key, value in metrics.items()})
            result.history.append(row)
            if checkpoint_path is not None:
                save_checkpoint(
                    checkpoint_path,
                    {
                        "config": asdict(config),
                        "identity": identity,
                        "epoch": epoch + 1,
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "generator": generator.get_state(),
                        "torch_rng": torch.get_rng_state(),
                        "history": result.history,
                    },
                )
                write_text(run_path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in result.history))
            tqdm.write(
                f"{desc} epoch {epoch + 1}/{config.epochs}: "
                + ", ".join(f"{k}={v:.4f}" for k, v in row.items() if k != "epoch")
            )
    result.seconds = time.perf_counter() - started
    if run_path is not None:
        write_json(
            run_path / "metrics.json",
            {"history": result.history, "final": result.final, "train_seconds_this_process": result.seconds},
        )
    return result
