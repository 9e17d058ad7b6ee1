"""Benchmark (not a test): re-measure a finished demo's models side by side, what `dynacnn bench` runs.

Base ResNet, CP-CNN at its chosen tau, MS-CNN with its chosen policy and the compute-matched ResNet, over the
test split at batch sizes 1, 32 and 256, interleaved in one process; prints MAC and wall-clock ratios against the
base (min and median of paired timings) and the routing efficiency, and rewrites bench.json / bench.md.
Run: .venv/bin/python benchmarks/speed.py [--demo-dir runs/demo] [--device auto] [--repeats 5]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from dynacnn.experiments.bench import bench_demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-dir", type=Path, default=Path("runs/demo"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    bench_demo(args.demo_dir, device=args.device, console=Console(), repeats=args.repeats)


if __name__ == "__main__":
    main()
