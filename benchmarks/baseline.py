"""Benchmark (not a test): train the demo's Fashion-MNIST baseline and print test top-1 and wall time.

Target: at least 92% test top-1 within 6 minutes of training on 2 CPU cores.
Run: .venv/bin/python benchmarks/baseline.py [--out runs/bench-baseline] [--epochs 8]
"""

from __future__ import annotations

import argparse
import json
import time

from dynacnn.baseline import evaluate_run, train_backbone
from dynacnn.experiments.demo import FULL_EPOCHS, base_model_spec
from dynacnn.runs import DataSpec
from dynacnn.train import TrainConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench-baseline")
    parser.add_argument("--epochs", type=int, default=FULL_EPOCHS)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    data_spec = DataSpec(name="fashion-mnist", data_dir=args.data_dir)
    spec = base_model_spec((1, 28, 28), 10)
    start = time.perf_counter()
    summary = train_backbone(args.out, spec, data_spec, TrainConfig(epochs=args.epochs, augment=False), device="cpu")
    wall = time.perf_counter() - start
    metrics = evaluate_run(args.out, device="cpu")
    print(
        json.dumps(
            {
                "model": f"{spec.arch} width {spec.width} stem {spec.stem}",
                "epochs": args.epochs,
                "train_wall_s": round(wall, 1),
                "test_top1": metrics["top1"],
                "test_top5": metrics["top5"],
                "macs_per_image": summary["macs_per_image"],
                "images_per_s_batch256": round(metrics["images_per_s"]),
                "target": "top1 >= 0.92 within 360 s",
                "met": metrics["top1"] >= 0.92 and wall <= 360,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
