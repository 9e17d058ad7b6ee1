"""The command line's option types, fixed choices and helpers (`dynacnn.cli` holds the commands).

The choices of fixed-value options are spelled out here, because reading them from the package would import torch
and make `dynacnn --help` and every shell completion take seconds; tests/test_cli.py checks them against the
package's own lists.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer

DATASETS = ("fashion-mnist", "cifar10", "cifar100", "imagefolder", "digits", "synthetic")
ARCHS = ("resnet18", "resnet34")
EXTERNAL_ARCHS = ("torchvision:resnet18", "torchvision:resnet34", "torchvision:resnet50", "torchvision:resnet101")
STEMS = ("small", "small-pool", "imagenet")
SCHEDULES = ("onecycle", "cosine")
SPLITS = ("stem", "layer1", "layer2", "layer3")
MEMORY_FORMATS = ("auto", "contiguous", "channels_last")
FC_ROWS = ("batch", "image")
SIMILARITIES = ("confusion", "indicator")
EDGE_WEIGHTS = ("kernel", "binary")
PRECISIONS = ("fp32", "bf16", "fp16")
ARCH_HELP = ("torchvision:resnet18", "resnet34", "resnet50", "resnet101", "timm:<resnet name>")
PER_CHANNEL = ("--mean", "--std")
"""Options that take one value per image channel (`--mean 0.485 0.456 0.406`)."""


def external_arch(value: str) -> str:
    """`--arch` of a checkpoint: one of `EXTERNAL_ARCHS` or timm:<name> (the name is checked when the model loads)."""
    if value in EXTERNAL_ARCHS or (value.startswith("timm:") and len(value) > len("timm:")):
        return value
    raise typer.BadParameter(f"{value!r} is not one of {', '.join(EXTERNAL_ARCHS)} or timm:<resnet name>")


def complete_arch(incomplete: str) -> list[str]:
    return [arch for arch in (*EXTERNAL_ARCHS, "timm:") if arch.startswith(incomplete)]


Dataset = Literal[DATASETS]
DataDir = Annotated[Optional[str], typer.Option(help="dataset directory (default: the dataset's standard location)")]
ImageSize = Annotated[
    Optional[int], typer.Option(metavar="N", help="resize (shorter side + centre crop) to N x N pixels")
]
Mean = Annotated[
    Optional[list[float]],
    typer.Option(metavar="M..", help="normalisation mean per channel, e.g. 0.485 0.456 0.406 (default: measured)"),
]
Std = Annotated[Optional[list[float]], typer.Option(metavar="S..", help="normalisation std per channel")]
Stream = Annotated[bool, typer.Option(help="imagefolder: decode per batch instead of into memory (large folders)")]
Device = Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")]
Precision = Annotated[
    Optional[Literal[PRECISIONS]], typer.Option(help="training arithmetic (default fp32; bf16 / fp16: mixed)")
]
Json = Annotated[bool, typer.Option("--json", help="print the figures as one JSON object")]
Run = Annotated[Optional[Path], typer.Option(help="a run directory made by `dynacnn train` (or give --checkpoint)")]
Checkpoint = Annotated[
    Optional[Path], typer.Option(exists=True, dir_okay=False, metavar="FILE", help="your model's weights (with --arch)")
]
Arch = Annotated[
    Optional[str],
    typer.Option(
        "--arch", parser=external_arch, autocompletion=complete_arch, metavar="ARCH", help=" | ".join(ARCH_HELP)
    ),
]
SourceData = Annotated[Optional[Dataset], typer.Option(help="with --checkpoint: the model's dataset")]
Levels = Annotated[int, typer.Option(help="2: a nested CP-CNN (S', M', heads) in the largest hyper-class too")]
MaxHyperClassSize = Annotated[
    Optional[int], typer.Option(metavar="N", help="--levels 2: split every hyper-class of more than N classes")
]


def multilevel_line(result: dict[str, Any], out: Path) -> str:
    """`dynacnn cpcnn --levels 2`'s summary of multilevel.json: both models' test figures."""
    one, two = result["test"]["one_level"], result["test"]["two_level"]
    return (
        f"two levels (hyper-classes {', '.join(map(str, result['split_hyper_classes']))} split): test top-1 "
        f"{two['top1']:.4f}, {two['macs_per_image'] / 1e6:.2f} M MACs/image (one level {one['top1']:.4f}, "
        f"{one['macs_per_image'] / 1e6:.2f} M); written to {out / 'two_level'} and {out / 'multilevel.md'}"
    )


CONFIG_OPTIONS = ("precision", "feature_memory")
"""Options that exist only to be passed to the command's config: given, they must be one of its fields."""


def config_from(cls: type, options: dict[str, Any], **renamed: Any) -> Any:
    """The dataclass `cls` from a command's options named as its fields (and `renamed` ones); None keeps a default."""
    values, fields = {**options, **renamed}, {f.name for f in dataclasses.fields(cls)}
    for name in CONFIG_OPTIONS:
        if values.get(name) is not None and name not in fields:
            raise typer.BadParameter(
                f"{cls.__name__} has no {name} setting yet", param_hint=f"'--{name.replace('_', '-')}'"
            )
    return cls(**{name: values[name] for name in fields if values.get(name) is not None})


def data_options_of(*values: Any, **more: Any) -> dict[str, Any]:
    """`load_dataset` options from the data options' values (`sources.data_options`)."""
    from dynacnn.sources import data_options

    return data_options(*values, **more)


def echo_json(obj: Any) -> None:
    typer.echo(json.dumps(obj))


def progress_to_stderr(json_out: bool) -> contextlib.AbstractContextManager:
    """With --json, stdout holds the JSON alone: what the work prints on the way goes to stderr."""
    return contextlib.redirect_stdout(sys.stderr) if json_out else contextlib.nullcontext()


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def spread_per_channel(args: list[str]) -> list[str]:
    """`--mean 0.485 0.456 0.406` (or `--mean 0.485,0.456,0.406`) -> `--mean 0.485 --mean 0.456 --mean 0.406`:
    click options take a fixed number of values, and a grayscale model has one per channel, an RGB one three."""
    spread: list[str] = []
    option, values = None, 0
    for arg in [*args, None]:
        name, equals, value = (arg or "").partition("=")
        per_channel = name in PER_CHANNEL
        given = value if per_channel else arg
        if per_channel or (option is not None and arg is not None and all(map(is_number, arg.split(",")))):
            if per_channel:
                if option is not None and not values:
                    spread.append(option)
                option, values = name, 0
            parts = given.split(",") if given else []
            spread += [item for part in parts for item in (option, part)]
            values += len(parts)
            continue
        if option is not None and not values:
            spread.append(option)  # no value: click then says that the option needs one
        option = None
        if arg is not None:
            spread.append(arg)
    return spread
