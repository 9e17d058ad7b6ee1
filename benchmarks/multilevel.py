"""Benchmark (not a test): one-level vs two-level CP-CNN (Fig. 1 bottom) on Fashion-MNIST at --quick-like scale.

Trains the demo's base model (ResNet-18 at width 0.25, the demo's 5 epochs) on the --quick subset (6000 training and
2000 test images) unless --run is given, converts it with the demo's --quick CP-CNN settings (S up to layer1, two
hyper-classes, heads L22 or L33, 4 epochs each) and adds a second level in the largest hyper-class
(`dynacnn.experiments.multilevel.convert_multilevel`). Both points are chosen on the calibration split; the test split
is routed once. Prints multilevel.json's comparison; the table is in OUT/multilevel.md.
Run: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/multilevel.py [--out runs/multilevel] [--run DIR] [--resume]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from dynacnn.baseline import train_backbone
from dynacnn.cpcnn.multilevel import MultiLevelConfig
from dynacnn.experiments.demo import FULL_EPOCHS, QUICK_OPTIONS, base_model_spec, demo_cpcnn_config
from dynacnn.experiments.multilevel import convert_multilevel
from dynacnn.runs import DataSpec, load_run
from dynacnn.train import TrainConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/multilevel")
    parser.add_argument("--run", default=None, help="a trained run (default: train the demo's base on the subset)")
    parser.add_argument("--max-drop", type=float, default=0.5, help="percentage points, on the calibration split")
    parser.add_argument("--max-hyper-class-size", type=int, default=None, help="default: split the largest")
    parser.add_argument("--clusters", type=int, default=2, help="level-1 hyper-classes (the demo's 2)")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    start = time.perf_counter()
    out = Path(args.out)
    run_dir = Path(args.run) if args.run else out / "base"
    if args.run is None:
        spec = DataSpec("fashion-mnist", options=dict(QUICK_OPTIONS))
        model_spec = base_model_spec((1, 28, 28), 10)
        train = TrainConfig(epochs=FULL_EPOCHS, augment=False)
        train_backbone(run_dir, model_spec, spec, train, device="cpu", resume=args.resume)
    run = load_run(run_dir, "cpu")
    data = run.data_spec.load()
    config = demo_cpcnn_config(True, max_drop=args.max_drop, n_clusters=args.clusters)
    levels = MultiLevelConfig(levels=2, max_hyper_class_size=args.max_hyper_class_size)
    result = convert_multilevel(run.model, data, out / "cpcnn", config, levels, device="cpu", resume=args.resume)
    summary = {key: result[key] for key in ("split", "split_hyper_classes", "taus", "calib", "test", "base")}
    summary["children"] = {
        g: {
            key: child[key]
            for key in (
                "classes",
                "sub_split",
                "shared",
                "sub_hyper_classes",
                "clustifier",
                "heads",
                "tau",
                "fixed_macs",
            )
        }
        for g, child in result["children"].items()
    }
    summary["wall_s"] = round(time.perf_counter() - start, 1)
    summary["threads"] = torch.get_num_threads()
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
