"""Benchmark (not a test): static ResNets at more widths or epochs, to check each method's compute-matched gap.

The demo trains one static width (the nearest, in log MACs, to both methods' chosen MACs) for the base's epochs and
reads each method's compute-matched accuracy off the line through it and the base; a method cheaper than that width
is then compared with an extrapolation, and the CP-CNN's heads train longer (16 epochs) than any static network.
This trains, inside each finished demo directory and with that demo's split and seed, static ResNets at `--widths`
(default: one `WIDTH_STEP` below the demo's) for `--epochs` (default: the demo's), distilled from the demo's base
and on labels alone (`static-w<width>-<recipe>-e<epochs>`; finished ones are reused), and prints each method's gap to
the static family with them (the base, the demo's static network when the epochs are the demo's, and the new ones)
beside the demo's gap, and whether its point is interpolated or extrapolated. Test split once per network.
Run: .venv/bin/python benchmarks/static_bracket.py runs/seeds/seed-0 runs/seeds/seed-1 [--widths 0.125]
     [--epochs 16] [--recipes distilled] [--json F]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from dynacnn.baseline import train_backbone
from dynacnn.distill import teacher_digest
from dynacnn.experiments.baselines import WIDTH_STEP, compare_with_static
from dynacnn.experiments.demo import DemoConfig, base_model_spec, point_on_test_split
from dynacnn.io import read_json
from dynacnn.report.render import table
from dynacnn.train import TrainConfig

RECIPES = {"distilled": "per_method", "labels": "per_method_plain"}
"""Each static recipe and the demo report's comparison that used a network trained that way."""


def static_point(
    run_dir: Path, width: float, teacher: Path | None, recipe: TrainConfig, demo: DemoConfig, report: dict
) -> dict[str, Any]:
    """Train (or reuse) one static ResNet at `width` with `recipe` on the demo's data and return its test point."""
    spec = base_model_spec(tuple(report["dataset"]["input_shape"]), report["dataset"]["num_classes"])
    wanted = (width, None if teacher is None else teacher_digest(teacher), recipe.epochs)
    found = read_json(run_dir / "run.json") if (run_dir / "run.json").exists() else None
    if (
        found is None
        or (found["model"]["width"], found.get("teacher_sha256"), found["train_config"]["epochs"]) != wanted
    ):
        if found is not None:
            raise SystemExit(f"{run_dir} holds another width, teacher or recipe; delete it to retrain")
        train_backbone(run_dir, replace(spec, width=width), demo.data_spec, recipe, resume=True, teacher=teacher)
    return point_on_test_split(run_dir, torch.device("cpu"))


def bracket(demo_dir: Path, widths: list[float] | None, epochs: int | None, recipes: list[str]) -> list[dict[str, Any]]:
    """Rows: per recipe and method, the demo's gap and the gap to the static family with the new networks."""
    report = read_json(demo_dir / "report.json")
    demo = DemoConfig.from_dict(report["settings"]["config"])
    recipe = replace(demo.recipe, epochs=epochs or demo.recipe.epochs)
    baselines = report["baselines"]
    demo_width = baselines["compute_matched"]["width"]
    widths = widths or [demo_width - WIDTH_STEP]
    chosen = {"cpcnn": report["cpcnn"]["chosen"], "mscnn": report["mscnn"]["chosen"]}
    rows = []
    for name in recipes:
        teacher = demo_dir / "base" if name == "distilled" else None
        trained = baselines["compute_matched_distilled" if name == "distilled" else "compute_matched"]
        extra = [
            static_point(demo_dir / f"static-w{w:g}-{name}-e{recipe.epochs}", w, teacher, recipe, demo, report)
            for w in widths
            if not (w == demo_width and recipe.epochs == demo.recipe.epochs)
        ]
        same_recipe = [trained] if recipe.epochs == demo.recipe.epochs else []
        family = [report["base"], *same_recipe, *extra]
        widened = compare_with_static(chosen, family)["methods"]
        for method, before in baselines[RECIPES[name]]["methods"].items():
            after = widened[method]
            rows.append(
                {
                    "demo": demo_dir.name,
                    "recipe": f"{name}, {recipe.epochs} epochs",
                    "method": method,
                    "macs_per_image": chosen[method]["macs_per_image"],
                    "statics": {f"{p['width']:g}": p["top1"] for p in family},
                    "gap_demo": before["gap_points"],
                    "kind_demo": before["static"]["kind"],
                    "gap_family": after["gap_points"],
                    "kind_family": after["static"]["kind"],
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("demo_dirs", nargs="+", type=Path, help="finished demo directories (report.json in each)")
    parser.add_argument("--widths", type=float, nargs="+", default=None, help="extra static widths")
    parser.add_argument("--epochs", type=int, default=None, help="their epochs (default: the demo's)")
    parser.add_argument("--recipes", nargs="+", choices=sorted(RECIPES), default=list(RECIPES))
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    rows = [row for demo_dir in args.demo_dirs for row in bracket(demo_dir, args.widths, args.epochs, args.recipes)]
    header = ["demo", "static recipe", "method", "MACs", "static top-1 by width", "gap (demo)", "gap (this family)"]
    print(
        table(
            header,
            [
                [
                    r["demo"],
                    r["recipe"],
                    r["method"],
                    f"{r['macs_per_image'] / 1e6:.2f} M",
                    ", ".join(f"{w}: {100 * t:.2f}" for w, t in r["statics"].items()),
                    f"{r['gap_demo']:+.2f} ({r['kind_demo']})",
                    f"{r['gap_family']:+.2f} ({r['kind_family']})",
                ]
                for r in rows
            ],
        )
    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
