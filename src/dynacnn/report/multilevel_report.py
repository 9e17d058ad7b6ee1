"""The one-level vs two-level CP-CNN comparison (multilevel.json) as a markdown section."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dynacnn.io import ensure_dir, write_text
from dynacnn.report.render import pct, table


def multilevel_markdown(result: dict[str, Any]) -> str:
    """Calibration-chosen points of both models (calibration and test once), with the split hyper-classes."""
    calib, test, base = result["calib"], result["test"], result["base"]
    rows = [["base", "", pct(base["top1"]), "", f"{base['macs_per_image'] / 1e6:.3f}", "", ""]]
    for name, label in (("one_level", "one level"), ("two_level", "two levels")):
        rows.append(
            [
                label,
                pct(calib[name]["top1"]),
                pct(test[name]["top1"]),
                pct(test[name]["top5"]),
                f"{test[name]['macs_per_image'] / 1e6:.3f}",
                f"{calib[name]['macs_per_image'] / 1e6:.3f}",
                f"{test[name]['images_per_s']:.0f}",
            ]
        )
    header = ["model", "calib top-1", "test top-1", "test top-5", "test M MACs/image", "calib M MACs/image", "images/s"]
    lines = [
        "## Multi-level CP-CNN (Fig. 1 bottom)\n",
        f"S ends after {result['split']}. "
        f"Level-1 tau {result['taus']['level1']}; tau' chosen on calibration with it fixed: "
        + ", ".join(f"hyper-class {g}: {tau}" for g, tau in result["taus"]["level2"].items())
        + ".\n",
        table(header, rows),
    ]
    for g, child in result["children"].items():
        groups = " | ".join(", ".join(map(str, group)) for group in child["sub_hyper_classes"])
        lines.append(
            f"- hyper-class {g} ({', '.join(map(str, child['classes']))}) -> {groups}; S' ({child['shared']}) ends "
            f"after {child['sub_split']}, M' {child['clustifier']}, sub-heads {', '.join(child['heads'])}, "
            f"S' + M' {child['fixed_macs'] / 1e6:.3f} M MACs"
        )
    lines.append(
        "\nBoth points are the cheapest meeting max_drop on the calibration split; the test split is routed once "
        f"(two-level top-1 from cached outputs: {pct(test['two_level']['cached_top1'])})."
    )
    return "\n".join(lines) + "\n"


def write_multilevel_report(out_dir: str | os.PathLike, result: dict[str, Any]) -> Path:
    """Write multilevel.md into `out_dir`; return its path."""
    return write_text(ensure_dir(out_dir) / "multilevel.md", multilevel_markdown(result))
