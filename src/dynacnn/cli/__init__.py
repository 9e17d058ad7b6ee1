"""Command-line front end: option parsing, configs and printing only; the work lives in the subpackages.

The option types, fixed choices and helpers are in `dynacnn.cli.options`; nothing here imports torch until a
command runs, so `dynacnn --help` and shell completion stay fast.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from dynacnn import __version__
from dynacnn.cli import cpcnn as cpcnn_commands
from dynacnn.cli import deploy
from dynacnn.cli.options import (
    ARCHS,
    FC_ROWS,
    SCHEDULES,
    STEMS,
    DataDir,
    Dataset,
    Device,
    ImageSize,
    Json,
    Mean,
    Precision,
    Std,
    Stream,
    config_from,
    data_options_of,
    echo_json,
    external_arch,
    progress_to_stderr,
    spread_per_channel,
)
from dynacnn.errors import DynacnnError

app = typer.Typer(
    add_completion=True,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="dynacnn: run only the parts of a CNN an input needs (CP-CNN routing, MS-CNN early exits).",
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"dynacnn {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", is_eager=True, callback=_print_version, help="print the version and exit"
    ),
) -> None:
    """dynacnn: run only the parts of a CNN an input needs (CP-CNN routing, MS-CNN early exits)."""


@app.command()
def train(
    data: Annotated[Dataset, typer.Option(help="the dataset")] = "fashion-mnist",
    data_dir: DataDir = None,
    image_size: ImageSize = None,
    mean: Mean = None,
    std: Std = None,
    stream: Stream = False,
    arch: Literal[ARCHS] = typer.Option("resnet18", help="the backbone"),
    width: float = typer.Option(0.25, help="channel width multiplier (1.0 = torchvision widths)"),
    stem: Literal[STEMS] = typer.Option("small-pool", help="3x3/1 conv, then a 2x2 max-pool; imagenet: 7x7/2 + pool"),
    epochs: int = typer.Option(8),
    batch_size: int = typer.Option(128),
    lr: float = typer.Option(0.1, help="peak learning rate"),
    weight_decay: float = typer.Option(5e-4),
    schedule: Literal[SCHEDULES] = typer.Option("onecycle"),
    label_smoothing: float = typer.Option(0.0),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="random crops and flips while training"),
    precision: Precision = None,
    calib_fraction: float = typer.Option(0.1, help="share of the training data held out for calibration"),
    train_limit: Optional[int] = typer.Option(None, help="train on a stratified subset of this many images"),
    seed: int = typer.Option(0),
    out: Path = typer.Option(Path("runs/base"), help="run directory"),
    resume: bool = typer.Option(False, help="continue from the run's last finished epoch"),
    device: Device = "auto",
    json_out: Json = False,
) -> None:
    """Train a baseline ResNet into a run directory

    Writes run.json, model.safetensors, checkpoint.pt and metrics into --out."""
    from dynacnn.baseline import train_backbone
    from dynacnn.runs import DataSpec, ModelSpec
    from dynacnn.train import TrainConfig

    options = data_options_of(image_size, mean, std, stream, train_limit=train_limit)
    config = config_from(TrainConfig, locals())
    data_spec = DataSpec(name=data, data_dir=data_dir, calib_fraction=calib_fraction, seed=seed, options=options)
    with progress_to_stderr(json_out):
        summary = train_backbone(out, ModelSpec(arch, width, stem), data_spec, config, device=device, resume=resume)
    if json_out:
        return echo_json({**summary, "out": str(out)})
    typer.echo(
        f"calibration top-1 {summary['calib']['top1']:.4f}, {summary['macs_per_image'] / 1e6:.2f} M MACs/image; run saved in {out}"
    )


@app.command("eval")
def evaluate_cmd(
    run: Path = typer.Option(..., "--run", help="a run directory made by `dynacnn train`"),
    json_out: Json = False,
    batch_size: int = typer.Option(256),
    device: Device = "auto",
) -> None:
    """Test-split top-1, top-5 and images/s of a trained run"""
    from dynacnn.baseline import evaluate_run

    with progress_to_stderr(json_out):
        metrics = evaluate_run(run, device=device, batch_size=batch_size)
    if json_out:
        return echo_json(metrics)
    typer.echo(
        f"test top-1 {metrics['top1']:.4f}  top-5 {metrics['top5']:.4f}  {metrics['images_per_s']:.0f} images/s (batch {batch_size})"
    )


@app.command()
def flops(
    arch: Literal[ARCHS] = typer.Option("resnet18"),
    num_classes: int = typer.Option(1000),
    input_size: tuple[int, int, int] = typer.Option((3, 224, 224), help="C H W"),
    width: float = typer.Option(1.0),
    stem: Literal[STEMS] = typer.Option("imagenet"),
    run: Optional[Path] = typer.Option(None, "--run", help="cost a trained run instead (its own input shape)"),
    json_out: Json = False,
) -> None:
    """MACs and parameters per module and in total

    MACs are torch.utils.flop_counter's FLOPs / 2."""
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
    typer.echo(json.dumps(report.to_dict()) if json_out else report.table())


app.command()(cpcnn_commands.cluster)
app.command()(cpcnn_commands.cpcnn)


@app.command()
def mscnn(
    data: Annotated[Dataset, typer.Option(help="the dataset")] = "fashion-mnist",
    data_dir: DataDir = None,
    image_size: ImageSize = None,
    mean: Mean = None,
    std: Std = None,
    stream: Stream = False,
    out: Path = typer.Option(Path("runs/mscnn"), help="output directory"),
    epochs: Optional[int] = typer.Option(None, help="training epochs (default 8)"),
    resume: bool = typer.Option(False, help="continue training from the last finished epoch"),
    max_drop: float = typer.Option(0.5, help="largest calibration top-1 drop against the full MS-CNN (points)"),
    augment: bool = typer.Option(False, "--augment/--no-augment", help="random crops and flips (docs/departures.md)"),
    precision: Precision = None,
    fc_rows: Literal[FC_ROWS] = typer.Option("batch", help="pruned FC rows: any image's of a sub-batch, or its own"),
    rank_images: Optional[int] = typer.Option(
        None, help="training images CAP_CONV's filter ranking is fitted on (10000)"
    ),
    teacher: Optional[Path] = typer.Option(
        None,
        help="a `dynacnn train` run on the same data and split whose model every stage learns from, or with "
        "--teacher-arch your checkpoint FILE",
    ),
    teacher_arch: Optional[str] = typer.Option(
        None, parser=external_arch, metavar="ARCH", help="--teacher is a checkpoint of ARCH (as cpcnn's --arch)"
    ),
    distill: Optional[float] = typer.Option(
        None, help="the teacher's share of every stage's loss (0.5 with --teacher)"
    ),
    quick: bool = typer.Option(False, help="sweep and time less (a smoke run)"),
    seed: int = typer.Option(0),
    device: Device = "auto",
    json_out: Json = False,
) -> None:
    """Train an MS-CNN with early exits and choose its policy

    Multi-stage network on DWT sub-bands; TP / CAP_FC / CAP_CONV / PTHP sweeps; bit-lengths."""
    from dynacnn.distill import DEFAULT_DISTILL
    from dynacnn.mscnn.config import MSCNNRunConfig
    from dynacnn.mscnn.pipeline import run_mscnn

    if teacher is not None and distill is None:
        distill = DEFAULT_DISTILL
    config = config_from(MSCNNRunConfig, locals())
    options = data_options_of(image_size, mean, std, stream)
    with progress_to_stderr(json_out):
        result = run_mscnn(
            out,
            config,
            data=data,
            data_dir=data_dir,
            data_options=options,
            device=device,
            resume=resume,
            teacher=teacher,
            teacher_arch=teacher_arch,
        )
    chosen, full = result["chosen"], result["full"]
    if json_out:
        return echo_json({"chosen": chosen, "full": full, "out": str(out)})
    typer.echo(
        f"MS-CNN {chosen['policy']}: test top-1 {chosen['top1']:.4f}, {chosen['macs_per_image'] / 1e6:.2f} M MACs/image "
        f"({chosen['macs_per_image'] / full['macs_per_image']:.0%} of the full network), {chosen['images_per_s']:.0f} images/s "
        f"(full {full['top1']:.4f}, {full['images_per_s']:.0f} images/s); written to {out}"
    )


@app.command()
def demo(
    data: Annotated[Dataset, typer.Option(help="the dataset")] = "fashion-mnist",
    data_dir: DataDir = None,
    image_size: ImageSize = None,
    mean: Mean = None,
    std: Std = None,
    stream: Stream = False,
    out: Path = typer.Option(Path("runs/demo"), help="output directory (a re-run reuses what is finished there)"),
    quick: bool = typer.Option(False, help="a subset and fewer epochs: a few minutes end to end"),
    max_drop: float = typer.Option(0.5, help="largest calibration top-1 drop of the chosen points (points)"),
    epochs: Optional[int] = typer.Option(None, help="of the base, MS-CNN and matched ResNet (default 5; 2 --quick)"),
    precision: Precision = None,
    seed: int = typer.Option(0),
    device: Device = "auto",
    json_out: Json = False,
) -> None:
    """Run the whole comparison and write one report

    Base model, CP-CNN, MS-CNN, baselines and the benchmark; writes report.md, report.json and plots."""
    from rich.console import Console

    from dynacnn.experiments.demo import DemoConfig, run_demo

    config = config_from(DemoConfig, locals(), data_options=data_options_of(image_size, mean, std, stream))
    with progress_to_stderr(json_out):
        report = run_demo(out, config, device=device, console=Console())
    typer.echo(json.dumps(report) if json_out else f"report: {out / 'report.md'}")


@app.command()
def bench(
    demo_dir: Path = typer.Option(Path("runs/demo"), "--demo-dir", help="a directory made by `dynacnn demo`"),
    repeats: int = typer.Option(5, help="interleaved repetitions over the test split"),
    onnx: bool = typer.Option(True, "--onnx/--no-onnx", help="also time the models exported to ONNX Runtime (CPU)"),
    device: Device = "auto",
    json_out: Json = False,
) -> None:
    """Images/s of the demo's four models side by side

    Base model, CP-CNN, MS-CNN and the compute-matched ResNet at batch 1, 32 and 256, in PyTorch and (on the CPU)
    exported to ONNX Runtime."""
    from rich.console import Console

    from dynacnn.experiments.bench import bench_demo

    with progress_to_stderr(json_out):
        result = bench_demo(demo_dir, device=device, console=Console(), repeats=repeats, onnx=onnx)
    if json_out:
        echo_json(result)


app.command()(deploy.export)
app.command("run")(deploy.run_export)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors print one line on stderr and exit 2 (`--debug` shows the traceback)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("DYNACNN_DEBUG") == "1"
    args = spread_per_channel([a for a in args if a != "--debug"]) or ["--help"]
    command = typer.main.get_command(app)
    try:
        with contextlib.ExitStack() as stack:
            if args[0] in command.commands:  # type: ignore[attr-defined]
                from dynacnn import distributed  # imports torch: not for --help or completion

                # under torchrun: join the process group; rank 0 alone prints (errors still reach stderr)
                if distributed.init_from_env() and not distributed.is_main():
                    stack.enter_context(contextlib.redirect_stdout(stack.enter_context(open(os.devnull, "w"))))
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
        known = args and args[0] in typer.main.get_command(app).commands  # type: ignore[attr-defined]
        hint = f"see `dynacnn {args[0]} --help`" if known else "see `dynacnn --help`"
        typer.echo(f"error: {exc.format_message()} ({hint})", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("error: interrupted; re-run the same command (with --resume where it applies) to continue", err=True)
        sys.exit(130)
    finally:
        if "torch.distributed" in sys.modules:
            from dynacnn import distributed

            distributed.destroy()
