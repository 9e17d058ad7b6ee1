"""Shared rendering helpers: markdown tables, percentages, timing tables and PNG figures written atomically."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dynacnn.io import atomic_write, ensure_dir


def pct(value: float) -> str:
    """A fraction as a percentage with two decimals: 0.9248 -> '92.48%'."""
    return f"{100 * value:.2f}%"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: Sequence[str] | None = None) -> str:
    """A markdown table; `align` entries are '---' or '---:' (default: the first column left, the rest right)."""
    align = align or ["---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 120, tight: bool = True) -> Path:
    """Render `fig` with the Agg canvas (no pyplot state) into a temp file renamed over `path` (its folder is made);
    `tight` crops the saved image to its contents (bbox_inches="tight")."""
    path = Path(path)
    ensure_dir(path.parent)
    FigureCanvasAgg(fig)
    options = {"bbox_inches": "tight"} if tight else {}
    return atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=dpi, **options))


def median_speedups(rows: Sequence[dict[str, Any]], batch_size: int = 256) -> dict[str, float]:
    """Each model's median paired wall-clock speed-up against the base at one batch size, from timing rows."""
    return {row["model"]: row["wall_speedup_median"] for row in rows if row["batch_size"] == batch_size}


def timing_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table of `dynacnn.timing.measure` rows (bench.md); ratios against each row's reference."""
    lines = [
        "| model | vs | batch | images/s | MACs/image | MAC speed-up | wall speed-up (min / median) | routing efficiency |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row['model']} | {row.get('reference', 'base')} | {row['batch_size']} | {row['images_per_s']:.0f} | "
            f"{row['macs_per_image'] / 1e6:.2f} M | {row['mac_speedup']:.2f}x | "
            f"{row['wall_speedup_min']:.2f}x / {row['wall_speedup_median']:.2f}x | {row['routing_efficiency']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def targets_table(targets: Sequence[dict[str, Any]]) -> str:
    """Markdown table of `experiments.speed_targets` entries (bench.md, the demo's summary); the last column is the
    compute-matched static ResNet's routing efficiency beside each routed model's."""
    rows = [
        (
            t["runtime"],
            f"{t['model']} vs {t['reference']}",
            t["batch_size"],
            t["measure"],
            f"{t['measured']:.3f}",
            f"{t['target']:g}",
            "met" if t["met"] else "missed",
            "-" if t.get("static_efficiency") is None else f"{t['static_efficiency']:.3f}",
        )
        for t in targets
    ]
    header = ("runtime", "pair", "batch", "measure", "measured (median)", "target", "", "static ResNet's efficiency")
    return table(header, rows, ["---", "---", "---:", "---", "---:", "---:", "---", "---:"])
