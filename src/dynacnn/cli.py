"""Command-line front end: argument parsing only; the work lives in the subpackages."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from dynacnn import __version__
from dynacnn.errors import DynacnnError

app = typer.Typer(
    add_completion=False,
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


DataOpt = typer.Option(
    "fashion-mnist", "--data", help="fashion-mnist | cifar10 | cifar100 | imagefolder | digits | synthetic"
)
DataDirOpt = typer.Option(None, "--data-dir", help="dataset directory (default: the dataset's standard location)")
DeviceOpt = typer.Option("auto", "--device", help="auto | cpu | cuda")


@app.command()
def train(
    data: str = DataOpt,
    data_dir: Optional[str] = DataDirOpt,
    arch: str = typer.Option("resnet18", help="resnet18 | resnet34"),
    width: float = typer.Option(0.25, help="channel width multiplier (1.0 = torchvision widths)"),
    stem: str = typer.Option(
        "small-pool", help="small (3x3/1) | small-pool (3x3/1 + 2x2 max-pool) | imagenet (7x7/2 + max-pool)"
    ),
    epochs: int = typer.Option(8),
    batch_size: int = typer.Option(128),
    lr: float = typer.Option(0.1, help="peak learning rate"),
    weight_decay: float = typer.Option(5e-4),
    schedule: str = typer.Option("onecycle", help="onecycle | cosine"),
    label_smoothing: float = typer.Option(0.0),
    no_augment: bool = typer.Option(False, "--no-augment", help="disable random crop / flip"),
    calib_fraction: float = typer.Option(0.1, help="share of the training data held out for calibration"),
    train_limit: Optional[int] = typer.Option(None, help="train on a stratified subset of this many images"),
    image_size: Optional[int] = typer.Option(
        None, help="imagefolder only: resize (shorter side + centre crop) to this size"
    ),
    seed: int = typer.Option(0),
    out: Path = typer.Option(Path("runs/base"), help="run directory"),
    resume: bool = typer.Option(False, help="continue from the run's last finished epoch"),
    device: str = DeviceOpt,
) -> None:
    """Train a baseline backbone; writes run.json, model.safetensors, checkpoint.pt and metrics."""
    from dynacnn.baseline import train_backbone
    from dynacnn.runs import DataSpec, ModelSpec
    from dynacnn.train import TrainConfig

    options = {
        key: value for key, value in (("train_limit", train_limit), ("image_size", image_size)) if value is not None
    }
    summary = train_backbone(
        out,
        ModelSpec(arch=arch, width=width, stem=stem),
        DataSpec(name=data, data_dir=data_dir, calib_fraction=calib_fraction, seed=seed, options=options),
        TrainConfig(
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            schedule=schedule,
            label_smoothing=label_smoothing,
            augment=not no_augment,
            seed=seed,
        ),
        device=device,
        resume=resume,
    )
    typer.echo(
        f"calibration top-1 {summary['calib']['top1']:.4f}, {summary['macs_per_image'] / 1e6:.2f} M MACs/image; run saved in {out}"
    )


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
        typer.echo(
            f"test top-1 {metrics['top1']:.4f}  top-5 {metrics['top5']:.4f}  {metrics['images_per_s']:.0f} images/s (batch {batch_size})"
        )


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


@app.command()
def cluster(
    run: Path = typer.Option(..., "--run", help="a run directory made by `dynacnn train`"),
    out: Optional[Path] = typer.Option(None, help="where clusters.json and the plots go (default: the run directory)"),
    n_clusters: Optional[int] = typer.Option(None, help="number of hyper-classes (default: eigengap heuristic)"),
    max_clusters: Optional[int] = typer.Option(None, help="upper bound of the eigengap search"),
    n_neighbors: Optional[int] = typer.Option(None, help="k of the kNN graph (default: smallest connected k)"),
    similarity: str = typer.Option("confusion", help="confusion (default) | indicator (the paper's literal variant)"),
    edge_weights: str = typer.Option("kernel", help="kernel (default) | binary (the paper's literal kNN graph)"),
    seed: int = typer.Option(0),
    device: str = DeviceOpt,
) -> None:
    """CP-CNN Alg. 2: hyper-classes from calibration-split probabilities; writes clusters.json and plots."""
    from dynacnn.cpcnn.discover import discover_hyperclasses

    summary = discover_hyperclasses(
        run,
        out or run,
        n_clusters=n_clusters,
        max_clusters=max_clusters,
        n_neighbors=n_neighbors,
        similarity=similarity,
        edge_weights=edge_weights,
        random_state=seed,
        device=device,
    )
    for index, members in enumerate(summary["hyper_classes"]):
        typer.echo(f"hyper-class {index}: {', '.join(members['names'])}")
    typer.echo(
        f"k = {summary['n_clusters']} (n_neighbors = {summary['n_neighbors']}); written to {out or run}/clusters.json"
    )


@app.command()
def cpcnn(
    run: Path = typer.Option(..., "--run", help="the base run made by `dynacnn train`"),
    out: Path = typer.Option(Path("runs/cpcnn"), help="output directory"),
    tau: Optional[float] = typer.Option(None, help="fixed Alg. 1 threshold in (0, 1]; default: chosen by --max-drop"),
    max_drop: float = typer.Option(0.5, help="largest calibration top-1 drop against the base, in percentage points"),
    split: Optional[str] = typer.Option(
        None, help="shared part S ends after: stem | layer1 | layer2 | layer3 (default: chosen)"
    ),
    configs: Optional[str] = typer.Option(
        None, help="fixed configurations, e.g. 'C0:L44,C1:L1,clustifier:LC', or candidates, e.g. 'L1,L22'"
    ),
    clusters: Optional[int] = typer.Option(
        None, "--clusters", help="number of hyper-classes (default: Alg. 2's eigengap)"
    ),
    epochs: Optional[int] = typer.Option(None, help="epochs for the clustifier and each head (default 8)"),
    resume: bool = typer.Option(False, help="reuse finished parts in --out"),
    memory_format: str = typer.Option("auto", help="auto (the faster, timed) | contiguous | channels_last"),
    seed: int = typer.Option(0),
    device: str = DeviceOpt,
) -> None:
    """CP-CNN: shared layers + clustifier + compressed hyper-class heads, tau sweep and routed inference."""
    from dynacnn.cpcnn.config import CPCNNConfig
    from dynacnn.cpcnn.pipeline import run_cpcnn

    extra = {"epochs": epochs} if epochs is not None else {}
    config = CPCNNConfig(
        tau=tau,
        max_drop=max_drop,
        split=split,
        configs=configs,
        n_clusters=clusters,
        seed=seed,
        memory_format=memory_format,
        **extra,
    )
    result = run_cpcnn(run, out, config, device=device, resume=resume)
    chosen = result["chosen"]
    typer.echo(
        f"CP-CNN tau {chosen['tau']}: test top-1 {chosen['top1']:.4f}, {chosen['macs_per_image'] / 1e6:.2f} M MACs/image, "
        f"{chosen['images_per_s']:.0f} images/s (base {result['base']['top1']:.4f}, {result['base']['macs_per_image'] / 1e6:.2f} M, "
        f"{chosen['base_images_per_s']:.0f} images/s); written to {out}"
    )


@app.command()
def mscnn(
    data: str = DataOpt,
    data_dir: Optional[str] = DataDirOpt,
    out: Path = typer.Option(Path("runs/mscnn"), help="output directory"),
    epochs: Optional[int] = typer.Option(None, help="training epochs"),
    resume: bool = typer.Option(False, help="continue training from the last finished epoch"),
    max_drop: float = typer.Option(
        0.5, help="largest calibration top-1 drop against the full MS-CNN, in percentage points"
    ),
    augment: bool = typer.Option(
        False, "--augment", help="train with random crops and flips (off: see docs/departures.md, training recipes)"
    ),
    fc_rows: str = typer.Option(
        "batch",
        help="pruned FC rows at run time: batch (rows any image of a sub-batch keeps) | image (each image's own)",
    ),
    seed: int = typer.Option(0),
    device: str = DeviceOpt,
) -> None:
    """MS-CNN: multi-stage network on DWT sub-bands, TP / CAP_FC / CAP_CONV / PTHP sweeps, bit-lengths."""
    from dynacnn.mscnn.config import MSCNNRunConfig
    from dynacnn.mscnn.pipeline import run_mscnn

    extra = {"epochs": epochs} if epochs is not None else {}
    config = MSCNNRunConfig(max_drop=max_drop, augment=augment, fc_rows=fc_rows, seed=seed, **extra)
    result = run_mscnn(out, config, data=data, data_dir=data_dir, device=device, resume=resume)
    chosen, full = result["chosen"], result["full"]
    typer.echo(
        f"MS-CNN {chosen['policy']}: test top-1 {chosen['top1']:.4f}, {chosen['macs_per_image'] / 1e6:.2f} M MACs/image "
        f"({chosen['macs_per_image'] / full['macs_per_image']:.0%} of the full network), {chosen['images_per_s']:.0f} images/s "
        f"(full {full['top1']:.4f}, {full['images_per_s']:.0f} images/s); written to {out}"
    )


@app.command()
def demo(
    data: str = DataOpt,
    data_dir: Optional[str] = DataDirOpt,
    out: Path = typer.Option(Path("runs/demo"), help="output directory (a re-run reuses what is finished there)"),
    quick: bool = typer.Option(False, help="a subset and fewer epochs: a few minutes end to end"),
    max_drop: float = typer.Option(
        0.5, help="largest calibration top-1 drop allowed when choosing operating points (points)"
    ),
    epochs: Optional[int] = typer.Option(
        None, help="epochs of the base, MS-CNN and matched ResNet (default 5; 2 with --quick)"
    ),
    seed: int = typer.Option(0),
    device: str = DeviceOpt,
) -> None:
    """The main job: base model, CP-CNN, MS-CNN, baselines, benchmark; writes report.md/.json and plots."""
    from dynacnn.experiments.demo import DemoConfig, run_demo

    config = DemoConfig(data=data, data_dir=data_dir, quick=quick, max_drop=max_drop, epochs=epochs, seed=seed)
    run_demo(out, config, device=device)
    typer.echo(f"report: {out / 'report.md'}")


@app.command()
def bench(
    demo_dir: Path = typer.Option(Path("runs/demo"), "--demo-dir", help="a directory made by `dynacnn demo`"),
    repeats: int = typer.Option(5, help="interleaved repetitions over the test split"),
    device: str = DeviceOpt,
) -> None:
    """Images/s of the base model, CP-CNN, MS-CNN and compute-matched ResNet at batch 1, 32, 256, side by side."""
    from rich.console import Console

    from dynacnn.experiments.bench import bench_demo

    bench_demo(demo_dir, device=device, console=Console(), repeats=repeats)


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
        known = args and args[0] in typer.main.get_command(app).commands  # type: ignore[attr-defined]
        hint = f"see `dynacnn {args[0]} --help`" if known else "see `dynacnn --help`"
        typer.echo(f"error: {exc.format_message()} ({hint})", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("error: interrupted; re-run the same command (with --resume where it applies) to continue", err=True)
        sys.exit(130)
