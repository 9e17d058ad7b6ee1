"""Benchmark (not a test): issue 19's targets over several demo seeds, so that a gap is read against its spread.

One demo's gap between two trained networks is within training noise (the same recipe moves a network's top-1 by up
to 0.9 points between initialisations). This runs `dynacnn demo --seed N` for each seed (each in `--out/seed-N`,
reusing what is finished there; the seed sets the calibration split, every initialisation and the batch order) and
prints, per seed and as mean and sample standard deviation, every accuracy figure and speed ratio the issue sets a
target for, and how many seeds met each target.
Run: .venv/bin/python benchmarks/seeds.py --out runs/seeds --seeds 0 1 2 [--json runs/seeds/seeds.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from dynacnn.experiments.demo import DemoConfig, run_demo
from dynacnn.report.render import table

# (label, target, larger is better): accuracies in points, everything else a ratio
ACCURACY_TARGETS = (
    ("CP-CNN top-1 - base (points)", -0.3, True),
    ("CP-CNN MAC saving", 0.40, True),
    ("MS-CNN top-1 - full MS-CNN (points)", -0.5, True),
    ("MS-CNN MACs / full MS-CNN", 0.35, False),
    ("full MS-CNN top-1 - base (points)", -0.8, True),
    ("CP-CNN - static, distilled (points)", 0.5, True),
    ("MS-CNN - static, distilled (points)", 0.5, True),
    ("CP-CNN - static, labels (points)", 0.5, True),
    ("MS-CNN - static, labels (points)", 0.5, True),
)


def accuracy_figures(report: dict[str, Any]) -> dict[str, float]:
    """The issue's accuracy and MAC figures of one demo's report.json (test split)."""
    base, cpcnn, mscnn = report["base"], report["cpcnn"]["chosen"], report["mscnn"]["chosen"]
    full = report["mscnn"]["full"]
    distilled = report["baselines"]["per_method"]["methods"]
    plain = report["baselines"]["per_method_plain"]["methods"]
    return {
        "CP-CNN top-1 - base (points)": 100 * (cpcnn["top1"] - base["top1"]),
        "CP-CNN MAC saving": 1 - cpcnn["macs_per_image"] / base["macs_per_image"],
        "MS-CNN top-1 - full MS-CNN (points)": 100 * (mscnn["top1"] - full["top1"]),
        "MS-CNN MACs / full MS-CNN": mscnn["macs_per_image"] / full["macs_per_image"],
        "full MS-CNN top-1 - base (points)": 100 * (full["top1"] - base["top1"]),
        "CP-CNN - static, distilled (points)": distilled["cpcnn"]["gap_points"],
        "MS-CNN - static, distilled (points)": distilled["mscnn"]["gap_points"],
        "CP-CNN - static, labels (points)": plain["cpcnn"]["gap_points"],
        "MS-CNN - static, labels (points)": plain["mscnn"]["gap_points"],
    }


def speed_figures(report: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """Each speed target of one demo's benchmark: label -> (measured, target)."""
    return {
        f"{t['runtime']}: {t['model']} {t['measure']} vs {t['reference']}, batch {t['batch_size']}": (
            t["measured"],
            t["target"],
        )
        for t in report["speed_targets"]
    }


def summarise(reports: dict[int, dict[str, Any]]) -> list[list[str]]:
    """Rows: figure, target, each seed's value, mean +- sample standard deviation, seeds that met the target."""
    seeds = sorted(reports)
    figures: list[tuple[str, float, bool, list[float]]] = [
        (label, target, larger, [accuracy_figures(reports[s])[label] for s in seeds])
        for label, target, larger in ACCURACY_TARGETS
    ]
    for label, (_, target) in speed_figures(reports[seeds[0]]).items():
        figures.append((label, target, True, [speed_figures(reports[s])[label][0] for s in seeds]))
    rows = []
    for label, target, larger, values in figures:
        met = sum((v >= target) if larger else (v <= target) for v in values)
        spread = f" +- {statistics.stdev(values):.2f}" if len(values) > 1 else ""
        rows.append(
            [
                label,
                f"{'>=' if larger else '<='} {target:g}",
                *(f"{v:.2f}" for v in values),
                f"{statistics.mean(values):.2f}{spread}",
                f"{met}/{len(values)}",
            ]
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/seeds"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    reports = {}
    for seed in args.seeds:
        run_demo(args.out / f"seed-{seed}", DemoConfig(seed=seed))
        reports[seed] = json.loads((args.out / f"seed-{seed}" / "report.json").read_text())
    print(
        table(
            ["figure (test split)", "target", *(f"seed {s}" for s in sorted(reports)), "mean +- sd", "met"],
            summarise(reports),
        )
    )
    if args.json:
        args.json.write_text(json.dumps({"seeds": sorted(reports), "rows": summarise(reports)}, indent=1))


if __name__ == "__main__":
    main()
