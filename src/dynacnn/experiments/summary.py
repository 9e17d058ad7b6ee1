"""The demo's closing console table: every model's test top-1 / top-5, MACs and measured speed, then each method's
gain over the static ResNet at its MACs (`experiments.baselines`)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from dynacnn.report.demo_report import longer_training, static_recipe
from dynacnn.report.render import median_speedups

LABELS = {"cpcnn": "CP-CNN", "mscnn": "MS-CNN"}


def _pct(point: dict[str, Any], key: str) -> str:
    return "-" if point.get(key) is None else f"{100 * point[key]:.2f}%"


def summary_table(console: Console, report: dict[str, Any]) -> None:
    """The closing console table: model, top-1, top-5, MACs/image, images/s, speed-up against the base; then the
    static ResNet at each method's MACs and the method's gain over it."""
    base, speed, baselines = report["base"], report["images_per_s_batch256"], report["baselines"]
    speedup = median_speedups(report["bench"])
    rows = [
        ("base ResNet", base, "base"),
        (f"CP-CNN (tau {report['cpcnn']['chosen']['tau']})", report["cpcnn"]["chosen"], "cpcnn"),
        (f"MS-CNN ({report['mscnn']['chosen']['policy']})", report["mscnn"]["chosen"], "mscnn"),
        (
            f"compute-matched ResNet (width {baselines['compute_matched']['width']:g})",
            baselines["compute_matched"],
            "matched",
        ),
    ]
    if baselines.get("compute_matched_distilled"):
        distilled = baselines["compute_matched_distilled"]
        rows.append((f"same, distilled from the base (width {distilled['width']:g})", distilled, "matched"))
    table = Table(
        title="dynacnn demo: test split; images/s measured side by side at batch 256 "
        "(speed-up: median of paired timings, bench.md)"
    )
    for column in ("model", "top-1", "top-5", "MACs/image", "images/s", "speed-up vs base"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for name, point, key in rows:
        table.add_row(
            name,
            _pct(point, "top1"),
            _pct(point, "top5"),
            f"{point['macs_per_image'] / 1e6:.2f} M",
            f"{speed[key]:.0f}",
            f"{speedup[key]:.2f}x",
        )
    per_method = (baselines.get("per_method") or {}).get("methods", {})
    for method, compared in per_method.items():
        static = compared["static"]
        table.add_row(
            f"static ResNet at the {LABELS.get(method, method)}'s MACs ({static['kind']})",
            _pct(static, "top1"),
            _pct(static, "top5"),
            f"{static['macs_per_image'] / 1e6:.2f} M",
            "-" if static.get("images_per_s") is None else f"~{static['images_per_s']:.0f}",
            "-",
        )
    console.print(table)
    margin = (baselines.get("per_method") or {}).get("margin_points")
    trained = static_recipe(report)
    for method, compared in per_method.items():
        plain = (baselines.get("per_method_plain") or {}).get("methods", {}).get(method)
        console.print(
            f"{LABELS.get(method, method)} against a static ResNet at its MACs ({trained}): "
            f"{compared['gap_points']:+.2f} points of test top-1 (target: at least +{margin:g}: "
            f"{'met' if compared['beats'] else 'missed'})"
            + ("" if plain is None else f"; against one trained on labels alone: {plain['gap_points']:+.2f}")
        )
    if per_method and longer_training(report):
        console.print(longer_training(report))
    for target in report.get("speed_targets", []):
        console.print(
            f"{target['runtime']}: {LABELS[target['model']]} {target['measure']} over {target['reference']} at batch "
            f"{target['batch_size']}: {target['measured']:.3f} (target {target['target']:g}: "
            f"{'met' if target['met'] else 'missed'})"
            + (
                ""
                if target.get("static_efficiency") is None
                else f"; the static ResNet, no routing: {target['static_efficiency']:.3f}"
            )
        )
