"""`dynacnn cluster` and `dynacnn cpcnn`: CP-CNN's hyper-classes (Alg. 2) and the conversion into a routed CP-CNN."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import typer

from dynacnn.cli.options import (
    EDGE_WEIGHTS,
    MEMORY_FORMATS,
    SIMILARITIES,
    SPLITS,
    Arch,
    Checkpoint,
    DataDir,
    Device,
    ImageSize,
    Json,
    Levels,
    MaxHyperClassSize,
    Mean,
    Precision,
    Run,
    SourceData,
    Std,
    Stream,
    config_from,
    data_options_of,
    echo_json,
    multilevel_line,
    progress_to_stderr,
)


def cluster(
    run: Run = None,
    checkpoint: Checkpoint = None,
    arch: Arch = None,
    data: SourceData = None,
    data_dir: DataDir = None,
    image_size: ImageSize = None,
    mean: Mean = None,
    std: Std = None,
    stream: Stream = False,
    out: Optional[Path] = typer.Option(None, help="where clusters.json and the plots go (default: the --run)"),
    hyper_classes: Optional[int] = typer.Option(None, "--hyper-classes", "--n-clusters", help="default: eigengap"),
    max_clusters: Optional[int] = typer.Option(None, help="upper bound of the eigengap search"),
    n_neighbors: Optional[int] = typer.Option(None, help="k of the kNN graph (default: smallest connected k)"),
    similarity: Literal[SIMILARITIES] = typer.Option("confusion", help="indicator: the paper's literal variant"),
    edge_weights: Literal[EDGE_WEIGHTS] = typer.Option("kernel", help="binary: the paper's literal kNN graph"),
    seed: int = typer.Option(0),
    device: Device = "auto",
    json_out: Json = False,
) -> None:
    """Group the classes into hyper-classes (CP-CNN Alg 2)

    Spectral clustering of the calibration-split probabilities; writes clusters.json and plots, which `dynacnn
    cpcnn` then uses (from the run directory, or through --clusters-file)."""
    from dynacnn.cpcnn.discover import discover_hyperclasses
    from dynacnn.errors import ConfigError
    from dynacnn.sources import load_source

    if out is None and run is None:
        raise ConfigError("--checkpoint needs --out DIR: where clusters.json and its plots go")
    options = data_options_of(image_size, mean, std, stream)
    params = {"n_clusters": hyper_classes, "max_clusters": max_clusters, "n_neighbors": n_neighbors}
    params.update(similarity=similarity, edge_weights=edge_weights, random_state=seed)
    with progress_to_stderr(json_out):
        source = load_source(run, checkpoint, arch, data, data_dir, seed=seed, options=options)
        summary = discover_hyperclasses(source.backbone, source.data, out or run, device=device, **params)
    if json_out:
        return echo_json({**summary, "out": str(out or run)})
    for index, members in enumerate(summary["hyper_classes"]):
        typer.echo(f"hyper-class {index}: {', '.join(members['names'])}")
    typer.echo(
        f"k = {summary['n_clusters']} (n_neighbors = {summary['n_neighbors']}); written to {out or run}/clusters.json"
    )


def cpcnn(
    run: Run = None,
    checkpoint: Checkpoint = None,
    arch: Arch = None,
    data: SourceData = None,
    data_dir: DataDir = None,
    image_size: ImageSize = None,
    mean: Mean = None,
    std: Std = None,
    stream: Stream = False,
    out: Path = typer.Option(Path("runs/cpcnn"), help="output directory"),
    tau: Optional[float] = typer.Option(None, help="fixed Alg. 1 threshold in (0, 1]; default: chosen by --max-drop"),
    max_drop: float = typer.Option(0.5, help="largest calibration top-1 drop against the base, in percentage points"),
    split: Optional[Literal[SPLITS]] = typer.Option(None, help="the shared part S ends after this (default: chosen)"),
    configs: Optional[str] = typer.Option(None, help="fixed ('C0:L44,C1:L1,clustifier:LC') or candidates ('L1,L22')"),
    hyper_classes: Optional[int] = typer.Option(None, "--hyper-classes", "--clusters", help="default: eigengap"),
    clusters_file: Optional[Path] = typer.Option(
        None,
        "--clusters-file",
        exists=True,
        dir_okay=False,
        metavar="FILE",
        help="hyper-classes from `dynacnn cluster` (default: the --run's clusters.json if it has one)",
    ),
    epochs: Optional[int] = typer.Option(None, help="epochs for the clustifier and each head (default 8)"),
    precision: Precision = None,
    resume: bool = typer.Option(False, help="reuse finished parts in --out"),
    memory_format: Literal[MEMORY_FORMATS] = typer.Option("auto", help="auto: the faster of the two, timed"),
    feature_memory: Optional[str] = typer.Option(None, help="for S's cached outputs: auto, 8GB, 0 (recompute S)"),
    levels: Levels = 1,
    max_hyper_class_size: MaxHyperClassSize = None,
    seed: int = typer.Option(0),
    device: Device = "auto",
    json_out: Json = False,
) -> None:
    """Convert a trained ResNet into a routed CP-CNN with its report

    Shared layers S, clustifier M and compressed hyper-class heads; tau chosen on the calibration split; routed
    inference measured against the base. From a --run, or from --checkpoint/--arch with --data options."""
    from dynacnn.cpcnn.config import CPCNNConfig
    from dynacnn.cpcnn.discover import use_clusters
    from dynacnn.cpcnn.multilevel import MultiLevelConfig
    from dynacnn.cpcnn.pipeline import convert
    from dynacnn.experiments.multilevel import convert_multilevel
    from dynacnn.io import read_json
    from dynacnn.runs import weights_digest
    from dynacnn.sources import load_source

    config = config_from(CPCNNConfig, locals(), n_clusters=hyper_classes).validate()
    nesting = MultiLevelConfig(levels, max_hyper_class_size).validate()
    options = data_options_of(image_size, mean, std, stream)
    source = load_source(run, checkpoint, arch, data, data_dir, seed=seed, options=options)
    info = source.data.info
    config.validate(info.num_classes)
    digest = weights_digest(source.backbone)
    used = use_clusters(out, clusters_file, source.clusters_file, info.class_names, config.n_clusters, digest)
    with progress_to_stderr(json_out):
        typer.echo(used)
        common, multi = {"device": device, "resume": resume, "spec": source.spec}, None
        if nesting.levels == 2:
            multi = convert_multilevel(source.backbone, source.data, out, config, nesting, **common)
        else:
            convert(source.backbone, source.data, out, config, **common)
    result = read_json(out / "cpcnn.json")
    chosen, base = result["chosen"], result["base"]
    if json_out:
        keys = ("clusters", "split", "configs", "base", "chosen")
        extra = {} if multi is None else {"multilevel": {key: multi[key] for key in ("children", "calib", "test")}}
        return echo_json({"clusters_used": used, **{key: result[key] for key in keys}, **extra, "out": str(out)})
    typer.echo(f"hyper-classes: {' | '.join(', '.join(group) for group in result['clusters'])}")
    typer.echo(
        f"CP-CNN tau {chosen['tau']}: test top-1 {chosen['top1']:.4f}, {chosen['macs_per_image'] / 1e6:.2f} M MACs/image, "
        f"{chosen['images_per_s']:.0f} images/s (base {base['top1']:.4f}, {base['macs_per_image'] / 1e6:.2f} M, "
        f"{chosen['base_images_per_s']:.0f} images/s); written to {out}"
    )
    if multi is not None:
        typer.echo(multilevel_line(multi, out))
