"""Benchmark (not a test): convert the demo's Fashion-MNIST baseline into a CP-CNN and check the issue's targets.

Targets at the chosen point (test split, CPU, batch 256, base and CP-CNN timed in the same process):
MACs per image >= 30% below the base model, top-1 within 0.3 points of it, images/s >= 1.25x the base's.
Run: .venv/bin/python benchmarks/cpcnn_fashion.py [--run runs/base] [--out runs/cpcnn] [--max-drop 0.2] [--resume]
     [--split layer1|auto] [--configs L22,L33|all] [--clusters 2|auto]   (defaults: the demo's S, heads, hyper-classes)
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

from dynacnn.cpcnn.config import DEFAULT_EPOCHS
from dynacnn.cpcnn.pipeline import run_cpcnn
from dynacnn.experiments.demo import FULL_CPCNN


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/base")
    parser.add_argument("--out", default="runs/cpcnn")
    parser.add_argument(
        "--max-drop", type=float, default=0.2, help="percentage points, chosen on the calibration split"
    )
    parser.add_argument("--split", default=FULL_CPCNN.split, help="the demo's; 'auto' sweeps every split point")
    parser.add_argument("--configs", default=FULL_CPCNN.configs, help="the demo's candidates; 'all' trains every one")
    parser.add_argument(
        "--clusters", default=str(FULL_CPCNN.n_clusters), help="the demo's count; 'auto': the eigengap's"
    )
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--feature-copies", type=int, default=1)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    start = time.perf_counter()
    split = None if args.split == "auto" else args.split
    configs = None if args.configs == "all" else args.configs
    n_clusters = None if args.clusters == "auto" else int(args.clusters)
    config = replace(
        FULL_CPCNN,
        max_drop=args.max_drop,
        split=split,
        configs=configs,
        n_clusters=n_clusters,
        epochs=args.epochs,
        feature_copies=args.feature_copies,
    )
    result = run_cpcnn(args.run, args.out, config, device="cpu", resume=args.resume)
    base, chosen = result["base"], result["chosen"]
    checks = {
        "mac_saving >= 0.30": chosen["mac_saving"] >= 0.30,
        "top1 within 0.3 points": chosen["top1"] >= base["top1"] - 0.003,
        "speed-up >= 1.25x": chosen["speedup"] >= 1.25,
    }
    print(
        json.dumps(
            {
                "wall_s": round(time.perf_counter() - start, 1),
                "clusters": result["clusters"],
                "split": result["split"],
                "configs": result["configs"],
                "base": {
                    "top1": base["top1"],
                    "macs_per_image": base["macs_per_image"],
                    "images_per_s": round(chosen["base_images_per_s"]),
                },
                "cpcnn": {
                    "tau": chosen["tau"],
                    "top1": chosen["top1"],
                    "macs_per_image": chosen["macs_per_image"],
                    "images_per_s": round(chosen["images_per_s"]),
                    "speedup": round(chosen["speedup"], 3),
                    "mac_saving": round(chosen["mac_saving"], 4),
                    "top1_change_points": round(100 * chosen["top1_change"], 2),
                },
                "oracle": result["oracle"]["top1"],
                "targets": checks,
                "met": all(checks.values()),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
