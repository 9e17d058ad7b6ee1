"""Run directories made by `dynacnn train`: model spec, data spec, weights (safetensors) and metadata (JSON)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from dynacnn.data import load_dataset
from dynacnn.distributed import broadcast_object, world_size
from dynacnn.errors import CheckpointError, ConfigError
from dynacnn.io import read_json, write_bytes, write_json
from dynacnn.models import build_resnet

RUN_FORMAT_VERSION = 1


@dataclass
class ModelSpec:
    """Everything needed to rebuild a backbone before loading its weights."""

    arch: str = "resnet18"
    width: float = 0.25
    stem: str = "small-pool"
    num_classes: int = 10
    in_channels: int = 1

    def build(self) -> nn.Module:
        return build_resnet(self.arch, self.num_classes, self.in_channels, self.width, self.stem)


RUNTIME_OPTIONS = ("num_workers",)
"""Data options that change how fast the data comes, not what it is: `DataSpec.load` may override them."""


@dataclass
class DataSpec:
    """How the run's dataset and splits were made (the splits are re-derived from it, deterministically).

    `options` are `load_dataset`'s: `image_size`, `mean`, `std` (the model's input size and normalisation),
    `train_limit`, `test_limit`, and per dataset e.g. `stream`, `crop_fraction`; kept as plain JSON values (a tuple
    becomes a list) so that a spec read back from run.json equals the one written.
    """

    name: str = "fashion-mnist"
    data_dir: str | None = None
    calib_fraction: float = 0.1
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.options = json.loads(json.dumps(self.options))

    def load(self, **runtime: Any):
        """The dataset and its splits; `runtime` overrides `RUNTIME_OPTIONS` of a streamed dataset (e.g. num_workers
        on another machine; ignored for data in memory)."""
        odd = sorted(set(runtime) - set(RUNTIME_OPTIONS))
        if odd:
            raise ConfigError(f"{', '.join(odd)} would change the run's data; only {', '.join(RUNTIME_OPTIONS)} may")
        given = {key: value for key, value in runtime.items() if value is not None and self.options.get("stream")}
        options = {**self.options, **given}
        return load_dataset(self.name, self.data_dir, calib_fraction=self.calib_fraction, seed=self.seed, **options)


def weight_bytes(module: nn.Module) -> bytes:
    """A module's state dict as safetensors bytes (what `save_weights` writes; the same in any memory layout)."""
    return save({key: value.detach().cpu().contiguous() for key, value in module.state_dict().items()})


def weights_digest(module: nn.Module) -> str:
    """The SHA-256 of `weight_bytes`: for a saved run, the SHA-256 of its model.safetensors."""
    return hashlib.sha256(weight_bytes(module)).hexdigest()


def save_weights(path: str | Path, module: nn.Module) -> None:
    """Atomically write a module's state dict as safetensors."""
    write_bytes(path, weight_bytes(module))


def load_weights(path: str | Path, module: nn.Module) -> nn.Module:
    """Load safetensors weights into `module`; a missing file or a shape mismatch is a clear error."""
    path = Path(path)
    try:
        state = load_file(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"no weights at {path}; finish the run that makes them first") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc}); delete it and re-run") from None
    expected = {key: tuple(value.shape) for key, value in module.state_dict().items()}
    found = {key: tuple(value.shape) for key, value in state.items()}
    if expected != found:
        diff = sorted(set(expected.items()) ^ set(found.items()))[:1]
        raise CheckpointError(
            f"weights in {path} were made for another architecture or number of classes (first difference: {diff[0][0]})"
        )
    module.load_state_dict(state)
    return module


@dataclass
class TrainedRun:
    """A finished `dynacnn train` run: its directory, specs and loaded model."""

    path: Path
    model_spec: ModelSpec
    data_spec: DataSpec
    model: nn.Module
    meta: dict[str, Any]


def save_run(
    run_dir: str | Path,
    model: nn.Module,
    model_spec: ModelSpec,
    data_spec: DataSpec,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write `model.safetensors` and `run.json` (format version, specs, the number of processes that trained it,
    extra metadata)."""
    run_dir = Path(run_dir)
    save_weights(run_dir / "model.safetensors", model)
    write_json(
        run_dir / "run.json",
        {
            "format_version": RUN_FORMAT_VERSION,
            "model": asdict(model_spec),
            "data": asdict(data_spec),
            "world_size": world_size(),
            **(extra or {}),
        },
    )


def load_run(run_dir: str | Path, device: torch.device | str = "cpu") -> TrainedRun:
    """Load a run made by `dynacnn train`; a missing or foreign run directory is a clear error."""
    run_dir = Path(run_dir)
    if not (run_dir / "run.json").exists():
        raise CheckpointError(
            f"{run_dir} is not a finished dynacnn run (no run.json); make it with `dynacnn train --out {run_dir}`"
        )
    meta = read_json(run_dir / "run.json")
    if meta.get("format_version") != RUN_FORMAT_VERSION:
        raise CheckpointError(f"{run_dir}/run.json has an unknown format version; it was not written by this dynacnn")
    try:
        model_spec = ModelSpec(**meta["model"])
        data_spec = DataSpec(**meta["data"])
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{run_dir}/run.json is incomplete ({exc}); re-run `dynacnn train`") from None
    model = load_weights(run_dir / "model.safetensors", model_spec.build()).to(device).eval()
    return TrainedRun(run_dir, model_spec, data_spec, model, meta)


def remembered(path: Path, key: str, identity: dict[str, Any], resume: bool, compute: Callable[[], Any]) -> Any:
    """`compute()`, stored under `key` in `path`; with `resume`, the stored value if its identity matches.

    Choices made by measured time (memory format, split point) are made once per output directory, so a
    resumed run repeats the interrupted run's choices instead of re-timing them (same result). Under torchrun every
    rank computes (any training inside is collective) and rank 0's value is every rank's: ranks that timed
    differently still build the same models."""
    stored = read_json(path) if path.exists() else {}
    entry = stored.get(key)
    if resume and isinstance(entry, dict) and entry.get("identity") == json.loads(json.dumps(identity)):
        return entry["value"]
    value = broadcast_object(compute())
    write_json(path, {**stored, key: {"identity": identity, "value": value}})
    return json.loads(json.dumps(value))
