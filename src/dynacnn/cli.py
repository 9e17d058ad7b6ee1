"""Command-line front end: argument parsing only; the work lives in the subpackages."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from dynacnn.errors import DynacnnError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="dynacnn: run only the parts of a CNN an input needs (CP-CNN routing, MS-CNN early exits).",
)

DataOpt = typer.Option("fashion-mnist", "--data", help="fashion-mnist | cifar10 | cifar100 | imagefolder | digits | synthetic")
DataDirOpt = typer.Option(None, "--data-dir", help="dataset directory (default: the dataset's standard location)")
DeviceOpt = typer.Option("auto", "--device", help="auto | cpu | cuda")


@app.command()
def train(
    data: str = DataOpt,
    data_dir: Optional[str] = DataDirOpt,
    arch: str = typer.Option("resnet18", help="resnet18 | resnet34"),
    width: float = typer.Option(0.25, help="channel width multiplier (1.0 = torchvision widths)"),
    stem: str = typer.Option("small-pool", help="small (3x3/1) | small-pool (3x3/1 + 2x2 max-pool) | imagenet (7x7/2 + max-pool)"),
    epochs: int = typer.Option(8),
    batch_size: int = typer.Option(128),
    lr: float = typer.Option(0.1, help="peak learning rate"),
    weight_decay: float = typer.Option(5e-4),
    schedule: str = typer.Option("onecycle", help="onecycle | cosine"),
    label_smoothing: float = typer.Option(0.0),
    no_augment: bool = typer.Option(False, "--no-augment", help="disable random crop / flip"),
    calib_fraction: float = typer.Option(0.1, help="share of the training data held out for calibration"),
    train_limit: Optional[int] = typer.Option(None, help="train on a stratified subset of this many images"),
    seed: int = typer.Option(0),
    out: Path = typer.Option(Path("runs/base"), help="run directory"),
    resume: bool = typer.Option(False, help="continue from the run's last finished epoch"),
    device: str = DeviceOpt,
) -> None:
    """Train a baseline backbone; writes run.json, model.safetensors, checkpoint.pt and metrics."""
    from dynacnn.baseline import train_backbone
    from dynacnn.runs import DataSpec, ModelSpec
    from dynacnn.train import TrainConfig

    options = {"train_limit": train_limit} if train_limit else {}
    summary = train_backbone(
        out,
        ModelSpec(arch=arch, width=width, stem=stem),
        DataSpec(name=data, data_dir=data_dir, calib_fraction=calib_fraction, seed=seed, options=options),
        TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, schedule=schedule,
                    label_smoothing=label_smoothing, augment=not no_augment, seed=seed),
        device=device, resume=resume,
    )
    typer.echo(f"calibration top-1 {summary['calib']['top1']:.4f}, {summary['macs_per_image'] / 1e6:.2f} M MACs/image; run saved in {out}")


@app.command("eval")
def evaluate_cmd(
    run: Path = typer.Option(..., "--run", help="a run directory made by `dynacnn train`"),
    json_out: bool = typer.Option(False, "--json", help="print {top1, top5, images_per_s} as JSON"),
    batch_size: int = typer.Option(256),
    device: str = DeviceOpt,
) -> None:
    """Test-split top-1 / top-5 and images/s of a trained run."""
    from dynacnn.baseline import evaluate_run

    metrics = evaluate_run(run, device=device, batch_size=batch_size)
    if json_out:
        typer.echo(json.dumps(metrics))
    else:
        typer.echo(f"test top-1 {metrics['top1']:.4f}  top-5 {metrics['top5']:.4f}  {metrics['images_per_s']:.0f} images/s (batch {batch_size})")


@app.command()
def flops(
    arch: str = typer.Option("resnet18"),
    num_classes: int = typer.Option(1000),
    input_size: tuple[int, int, int] = typer.Option((3, 224, 224), help="C H W"),
    width: float = typer.Option(1.0),
    stem: str = typer.Option("imagenet", help="small | small-pool | imagenet"),
    run: Optional[Path] = typer.Option(None, "--run", help="cost a trained run instead (its own input shape)"),
    json_out: bool = typer.Option(False, "--json", help="print {macs, params, modules} as JSON"),
) -> None:
    """MACs and parameters per module and in total (MACs = flop_counter FLOPs / 2)."""
    import torch

    from dynacnn.flops import count_macs
    from dynacnn.runs import ModelSpec, load_run

    if run is not None:
        trained = load_run(run)
        model = trained.model
        shape = tuple(trained.meta.get("input_shape") or trained.data_spec.load().info.input_shape)
    else:
        if min(input_size) < 1:
            raise typer.BadParameter(f"--input-size must be positive, got {input_size}")
        model = ModelSpec(arch=arch, width=width, stem=stem, num_classes=num_classes, in_channels=input_size[0]).build()
        shape = input_size
    report = count_macs(model, torch.zeros(1, *shape), depth=1)
    if json_out:
        typer.echo(json.dumps(report.to_dict()))
    else:
        typer.echo(report.table())


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors print one line on stderr and exit 2 (`--debug` shows the traceback)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("DYNACNN_DEBUG") == "1"
    args = [a for a in args if a != "--debug"] or ["--help"]
    command = typer.main.get_command(app)
    try:
        command.main(args=args, prog_name="dynacnn", standalone_mode=False)
    except DynacnnError as exc:
        if debug:
            raise
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except (typer.Exit, typer.Abort) as exc:
        sys.exit(getattr(exc, "exit_code", 130))
    except Exception as exc:
        if debug or not (hasattr(exc, "format_message") and hasattr(exc, "exit_code")):
            raise
        hint = f"see `dynacnn {args[0]} --help`" if args and not args[0].startswith("-") else "see `dynacnn --help`"
        typer.echo(f"error: {exc.format_message()} ({hint})", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("error: interrupted; re-run the same command (with --resume where it applies) to continue", err=True)
        sys.exit(130)
