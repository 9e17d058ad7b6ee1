"""`dynacnn export` and `dynacnn run`: routed models as ONNX parts plus routing.json, run with ONNX Runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dynacnn.cli.options import Json, echo_json


def export(
    cpcnn: Optional[Path] = typer.Option(None, "--cpcnn", help="a CP-CNN directory made by `dynacnn cpcnn`"),
    mscnn: Optional[Path] = typer.Option(
        None, "--mscnn", help="an MS-CNN directory made by `dynacnn mscnn` (its chosen policy)"
    ),
    run: Optional[Path] = typer.Option(None, "--run", help="a run directory made by `dynacnn train` (a static model)"),
    out: Path = typer.Option(..., "--out", help="the export directory: routing.json and one ONNX graph per part"),
    all_variants: bool = typer.Option(
        False, "--all-variants", help="MS-CNN: also write the graphs every other policy needs"
    ),
    int8: bool = typer.Option(
        False, "--int8", help="quantize the large graphs to int8, calibrated on the model's calibration split"
    ),
    json_out: Json = False,
) -> None:
    """Export a CP-CNN, an MS-CNN or a run as ONNX graphs

    A routed CP-CNN, an early-exit MS-CNN (its chosen policy) or a trained run. Each static part is its own ONNX graph (BatchNorm folded, dynamic batch); routing.json holds the routing policy
    and per-part MACs. `dynacnn run --export DIR` runs it with ONNX Runtime; `dynacnn.runtime` needs no torch.
    With --int8 the graphs of at least 100 k MACs per image run in int8 (ONNX Runtime static quantization)."""
    from dynacnn.export import export_directory

    variants = "all" if all_variants else "policy"
    spec = export_directory(out, cpcnn=cpcnn, mscnn=mscnn, run=run, variants=variants, int8=int8)
    graphs = sorted(path.name for path in Path(out).glob("*.onnx"))
    if json_out:
        return echo_json(
            {"out": str(out), "method": spec["method"], "format_version": spec["format_version"], "graphs": graphs}
        )
    quantized = sum(why.startswith("int8") for why in spec.get("quantization", {}).get("graphs", {}).values())
    typer.echo(
        f"exported the {spec['method']} model to {out}: routing.json and {len(graphs)} ONNX graphs"
        + (f" ({quantized} in int8)" if int8 else "")
    )


def run_export(
    export_dir: Path = typer.Option(..., "--export", help="a directory made by `dynacnn export`"),
    batch_size: int = typer.Option(256),
    threads: Optional[int] = typer.Option(None, help="ONNX Runtime intra-op threads per graph (default: its own)"),
    limit: Optional[int] = typer.Option(None, help="only this many test images (a stratified subset)"),
    json_out: Json = False,
) -> None:
    """Run an exported model with ONNX Runtime

    On its dataset's test split: top-1, MACs per image and images/s."""
    from dynacnn.export import evaluate_export

    result = evaluate_export(export_dir, batch_size=batch_size, threads=threads, limit=limit)
    if json_out:
        return echo_json(result)
    typer.echo(
        f"test top-1 {result['top1']:.4f}  {result['macs_per_image'] / 1e6:.2f} M MACs/image  "
        f"{result['images_per_s']:.0f} images/s (batch {batch_size}, ONNX Runtime)"
    )
