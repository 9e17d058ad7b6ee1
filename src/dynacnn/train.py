"""The one training loop for every model in the project: SGD + momentum, one-cycle or cosine, checkpoints, resume.

Mixed precision (`TrainConfig.precision`): "bf16" or "fp16" run the forward pass and the loss under `torch.autocast`
on the model's device type (weights and optimizer state stay float32); "fp16" scales the loss with
`torch.amp.GradScaler` and needs CUDA. On CUDA the optimizer is the fused SGD kernel, which takes the scaler's
inf check without a host sync; losses and accuracies are summed on the device and read once per epoch.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from dynacnn import distributed
from dynacnn.data.loaders import Batches
from dynacnn.data.loaders import ImageBatches as ImageBatches  # re-exported: where users have imported it from
from dynacnn.data.loaders import TensorBatches as TensorBatches
from dynacnn.errors import CheckpointError, ConfigError
from dynacnn.io import atomic_write, ensure_dir, write_json, write_text
from dynacnn.models.layout import safe_backward_layout

CHECKPOINT_VERSION = 1
SCHEDULES = ("onecycle", "cosine")
PRECISIONS = ("fp32", "bf16", "fp16")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


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
    precision: str = "fp32"

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
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown --precision {self.precision!r}; use one of {', '.join(PRECISIONS)}")
        return self

    def to_dict(self) -> dict[str, Any]:
        """The settings a checkpoint records and a resume compares; fp32 leaves `precision` out, so runs made
        before the option existed keep their identity."""
        settings = asdict(self)
        if self.precision == "fp32":
            del settings["precision"]
        return settings


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when available, else CPU; 'cuda' without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ConfigError(f"unknown --device {name!r}; use auto, cpu or cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA device is available; use --device cpu or auto")
    return torch.device(name)


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse an unknown precision, and fp16 off CUDA (its loss scaling and kernels are CUDA's)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown --precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(f"--precision fp16 needs a CUDA device, not {device.type}; use bf16 or fp32 there")


def autocast(device: torch.device, precision: str = "fp32") -> torch.autocast:
    """`torch.autocast` on `device`'s type in `precision` ("fp32": disabled, everything stays float32)."""
    check_precision(precision, device)
    return torch.autocast(device.type, AUTOCAST_DTYPES.get(precision, torch.bfloat16), precision != "fp32")


def final_logits(outputs: Any) -> torch.Tensor:
    """The logits to score: the tensor itself, or the last of a list (multi-exit models)."""
    return outputs[-1] if isinstance(outputs, (list, tuple)) else outputs


@torch.no_grad()
def predict(
    model: nn.Module,
    data: Batches,
    device: torch.device,
    logits_fn: Callable[[Any], torch.Tensor] = final_logits,
    precision: str = "fp32",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, K, float32) and labels (N,) for every sample of `data`, on the CPU (one copy at the end);
    the forward passes run under `autocast(device, precision)`. Under torchrun each rank computes its shard of
    every batch and every rank gets all N rows, in order (`distributed.sharded_map`)."""
    model.eval()
    with autocast(device, precision):
        logits, labels = distributed.sharded_map(lambda inputs: logits_fn(model(inputs)).float(), data(None, device))
    return logits.cpu(), labels.cpu()


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
    model: nn.Module,
    data: Batches,
    device: torch.device,
    logits_fn: Callable[[Any], torch.Tensor] = final_logits,
    precision: str = "fp32",
) -> dict[str, float]:
    """Top-1, top-5 (fractions) and mean cross-entropy on `data` (forward passes in `precision`, see `predict`)."""
    logits, labels = predict(model, data, device, logits_fn, precision)
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


def _make_optimizer(
    model: nn.Module, config: TrainConfig, steps_per_epoch: int, fused: bool
) -> tuple[torch.optim.Optimizer, Any]:
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() > 1]
    no_decay = [p for p in params if p.dim() <= 1]
    optimizer = torch.optim.SGD(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        momentum=config.momentum,
        nesterov=True,
        fused=fused or None,
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


@dataclass
class _Step:
    """What one SGD step needs besides the batch: optimizer, schedule, loss, mixed precision."""

    optimizer: torch.optim.Optimizer
    scheduler: Any
    criterion: Callable[[Any, torch.Tensor], torch.Tensor]
    logits_fn: Callable[[Any], torch.Tensor]
    scaler: torch.amp.GradScaler
    device: torch.device
    precision: str


def _train_epoch(
    model: nn.Module, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], step: _Step, steps: int, desc: str
) -> dict[str, float]:
    """One pass of SGD steps over `batches`; returns the epoch's training loss, top-1 and images/s.

    No step waits for the device: loss and hits are summed there and read once, after the last step. Under torchrun
    each rank steps on its shard of every global batch with its loss scaled (`distributed.local_batch`), so that
    DDP's averaged gradient is the gradient of the whole batch; the epoch's sums are added over the ranks."""
    model.train()
    seen = 0
    loss_sum = torch.zeros((), dtype=torch.float64, device=step.device)
    correct = torch.zeros((), dtype=torch.long, device=step.device)
    epoch_start = time.perf_counter()
    bar = tqdm(batches, total=steps, desc=desc, leave=False, disable=None if distributed.is_main() else True)
    for inputs, labels in bar:
        inputs, labels, scale = distributed.local_batch(inputs, labels)
        with autocast(step.device, step.precision):
            outputs = model(inputs)
            loss = step.criterion(outputs, labels)
        step.optimizer.zero_grad(set_to_none=True)
        step.scaler.scale(loss * scale).backward()
        step.scaler.step(step.optimizer)
        step.scaler.update()
        step.scheduler.step()
        if scale:  # scale 0: a stand-in row, not counted
            batch = labels.shape[0]
            seen += batch
            loss_sum += loss.detach() * batch
            correct += (step.logits_fn(outputs).argmax(1) == labels).sum()
        bar.set_postfix(img_s=f"{seen * distributed.world_size() / (time.perf_counter() - epoch_start):.0f}")
    sums = torch.stack([loss_sum, correct.double(), torch.tensor(float(seen), dtype=torch.float64, device=step.device)])
    total_loss, total_correct, seen = distributed.all_reduce_sum(sums).tolist()
    return {
        "train_loss": total_loss / max(seen, 1),
        "train_top1": total_correct / max(seen, 1),
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
    whose identity or config (precision included) differ, and continues after its last finished epoch. Convolutions
    that oneDNN cannot train in channels_last on the CPU train in NCHW (`safe_backward_layout`); every other layer
    keeps the model's layout. `config.precision` "bf16" / "fp16" trains under autocast (fp16 with a GradScaler,
    CUDA only); calibration is evaluated in the same precision.

    Under torchrun (`dynacnn.distributed`) every rank calls `fit` alike: the model trains in DistributedDataParallel on
    each rank's shard of the same global batches (the same seeded order on every rank), calibration is sharded, rank
    0 alone writes checkpoints and metrics, and every rank resumes from the same checkpoint.
    """
    config.validate()
    device = torch.device(device) if isinstance(device, str) else device
    check_precision(config.precision, device)
    batch_size = getattr(train_data, "batch_size", config.batch_size)
    distributed.check_batch_size(batch_size)
    model.to(device)
    steps_per_epoch = max(1, -(-train_data.num_samples // batch_size))
    fused = device.type == "cuda"
    optimizer, scheduler = _make_optimizer(model, config, steps_per_epoch, fused)
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")
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
        if state.get("config") != config.to_dict() or state.get("identity") != identity:
            raise CheckpointError(
                f"checkpoint {checkpoint_path} was made with other settings; re-run with the same options or without --resume"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:  # the kernel of this device, whichever device saved the state
            group["fused"] = fused or None
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        generator.set_state(state["generator"])
        per_rank = state.get("torch_rng_ranks") or []  # each rank's own stream when the world size is the same
        same_world = len(per_rank) == distributed.world_size()
        torch.set_rng_state(per_rank[distributed.rank()] if same_world else state["torch_rng"])
        result.history = list(state["history"])
        start_epoch = int(state["epoch"])
    step = _Step(optimizer, scheduler, criterion, logits_fn, scaler, device, config.precision)
    started = time.perf_counter()
    with safe_backward_layout(model), distributed.data_parallel(model) as trained:
        for epoch in range(start_epoch, config.epochs):
            row = {
                "epoch": epoch + 1,
                **_train_epoch(
                    trained,
                    train_data(generator, device),
                    step,
                    steps_per_epoch,
                    f"{desc} {epoch + 1}/{config.epochs}",
                ),
            }
            distributed.sync_buffers(model)
            if calib_data is not None:
                metrics = evaluate(model, calib_data, device, logits_fn, config.precision)
                row.update({f"calib_{key}": value for key, value in metrics.items()})
            result.history.append(row)
            if checkpoint_path is not None:
                save_checkpoint(
                    checkpoint_path,
                    {
                        "config": config.to_dict(),
                        "identity": identity,
                        "epoch": epoch + 1,
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict(),
                        "generator": generator.get_state(),
                        "torch_rng": torch.get_rng_state(),
                        "torch_rng_ranks": distributed.all_gather_objects(torch.get_rng_state()),
                        "world_size": distributed.world_size(),
                        "history": result.history,
                    },
                )
                write_text(run_path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in result.history))
            if distributed.is_main():
                tqdm.write(
                    f"{desc} epoch {epoch + 1}/{config.epochs}: "
                    + ", ".join(f"{k}={v:.4f}" for k, v in row.items() if k != "epoch")
                )
    result.seconds = time.perf_counter() - started
    if run_path is not None:
        write_json(
            run_path / "metrics.json",
            {
                "history": result.history,
                "final": result.final,
                "train_seconds_this_process": result.seconds,
                "world_size": distributed.world_size(),
            },
        )
    return result
