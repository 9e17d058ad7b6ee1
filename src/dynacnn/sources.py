"""Where a conversion's backbone and data come from: a `dynacnn train` run directory, or a checkpoint of a named
architecture (`--checkpoint FILE --arch torchvision:resnet18 | timm:<name>`) with data options.

`load_source(...)` returns a `Source`: the trained backbone (CPU, eval mode), its `DatasetSplits`, the `DataSpec`
that re-derives them, and `spec`, the backbone's description that `convert` records for `load_cpcnn` together
with where it came from (the run directory, or the checkpoint, its `--arch` and the data).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import nn

from dynacnn.cpcnn.serialize import backbone_spec
from dynacnn.data import DatasetSplits
from dynacnn.errors import ConfigError
from dynacnn.models.external import first_conv, load_backbone
from dynacnn.runs import DataSpec, load_run

CHANNEL_COUNTS = (1, 3)


@dataclass
class Source:
    """A trained backbone, its data and their description (what `convert` and `discover_hyperclasses` need)."""

    backbone: nn.Module
    data: DatasetSplits
    data_spec: DataSpec
    spec: dict[str, Any]
    run_dir: Path | None = None

    @property
    def clusters_file(self) -> Path | None:
        """The hyper-classes `dynacnn cluster --run` wrote into the run directory, if any."""
        path = None if self.run_dir is None else self.run_dir / "clusters.json"
        return path if path is not None and path.exists() else None


def _check_channel_count(option: str, values: Sequence[float]) -> list[float]:
    """`--mean` / `--std`: one value per image channel, 1 or 3 (checked against the data's channels when it loads)."""
    if len(values) not in CHANNEL_COUNTS:
        raise ConfigError(
            f"{option} has {len(values)} values; give one per image channel (1 for grayscale, 3 for RGB), "
            f"e.g. {option} {'0.485 0.456 0.406' if option == '--mean' else '0.229 0.224 0.225'}"
        )
    return [float(value) for value in values]


def data_options(
    image_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    stream: bool = False,
    **more: Any,
) -> dict[str, Any]:
    """`load_dataset` options from command-line values; those left out (None, empty, False) are not recorded, so a
    run's data identity only names what was given."""
    options: dict[str, Any] = {"image_size": image_size, "stream": stream or None, **more}
    if mean:
        options["mean"] = _check_channel_count("--mean", mean)
    if std:
        options["std"] = _check_channel_count("--std", std)
    return {key: value for key, value in options.items() if value is not None}


def _check_data_fits(backbone: nn.Module, data: DatasetSplits, where: str, fix: str) -> None:
    """Refuse data whose class count or channel count differs from the backbone's head and first convolution."""
    info = data.info
    classes = backbone.fc.out_features
    if classes != info.num_classes:
        raise ConfigError(
            f"{where} has {classes} output classes but the data ({info.name}) has {info.num_classes} "
            f"({', '.join(info.class_names[:3])}, ...); {fix}"
        )
    channels, given = first_conv(backbone).in_channels, info.input_shape[0]
    if channels != given:
        raise ConfigError(f"{where} takes {channels}-channel images but the data ({info.name}) has {given}; {fix}")


def from_run(run_dir: str | Path) -> Source:
    """The backbone and data of a finished `dynacnn train` run."""
    run = load_run(run_dir, "cpu")
    data = run.data_spec.load()
    fix = "check the run's data (run.json)"
    _check_data_fits(run.model, data, f"the model of {run_dir}", fix)
    spec = {"kind": "dynacnn", **asdict(run.model_spec), "run_dir": str(run_dir), "data": asdict(run.data_spec)}
    return Source(run.model, data, run.data_spec, spec, Path(run_dir))


def from_checkpoint(checkpoint: str | Path, arch: str, data_spec: DataSpec) -> Source:
    """A checkpoint (safetensors or a `weights_only` torch file) of architecture `arch`, with the data of `data_spec`;
    the head's class count comes from the checkpoint and must be the data's."""
    backbone = load_backbone(arch, Path(checkpoint)).eval()
    data = data_spec.load()
    fix = "use the data the model was trained on (same classes, same channels)"
    _check_data_fits(backbone, data, f"checkpoint {checkpoint} ({arch})", fix)
    spec = {**backbone_spec(backbone), "checkpoint": {"path": str(checkpoint), "arch": arch}, "data": asdict(data_spec)}
    return Source(backbone, data, data_spec, spec)


def load_source(
    run: str | Path | None = None,
    checkpoint: str | Path | None = None,
    arch: str | None = None,
    data: str | None = None,
    data_dir: str | Path | None = None,
    *,
    calib_fraction: float = 0.1,
    seed: int = 0,
    options: dict[str, Any] | None = None,
) -> Source:
    """`--run DIR`, or `--checkpoint FILE --arch ARCH --data NAME [--data-dir DIR]` with data `options`; exactly one
    of the two (a run brings its own data, so data options with `--run` are refused)."""
    if (run is None) == (checkpoint is None):
        raise ConfigError(
            "give exactly one of --run DIR (a `dynacnn train` run) or --checkpoint FILE --arch ARCH (your own model)"
        )
    if run is not None:
        given = [name for name, value in (("--arch", arch), ("--data", data), ("--data-dir", data_dir)) if value]
        given += [f"--{key.replace('_', '-')}" for key in options or {}]
        if given:
            raise ConfigError(
                f"{', '.join(given)} cannot be used with --run (a run brings its own model and data); drop them, or "
                "use --checkpoint FILE --arch ARCH"
            )
        return from_run(run)
    if arch is None or data is None:
        missing = " and ".join(name for name, value in (("--arch", arch), ("--data", data)) if value is None)
        raise ConfigError(
            f"--checkpoint needs {missing}, e.g. --arch torchvision:resnet18 --data imagefolder --data-dir DIR"
        )
    data_spec = DataSpec(
        name=data,
        data_dir=None if data_dir is None else str(data_dir),
        calib_fraction=calib_fraction,
        seed=seed,
        options=dict(options or {}),
    )
    return from_checkpoint(checkpoint, arch, data_spec)
