"""Benchmark (not a test): peak memory of a CP-CNN conversion on an image folder larger than its memory budget.

Writes an image folder of random-texture PNGs (`--classes` x `--per-class` training and a fifth as many test images
at `--size` px), then converts an untrained ResNet-18 (width 0.25; the figures are about memory, not accuracy;
`quick`: the clustifier and heads see 1000 training images for one epoch) two ways, each in a fresh process so
that its peak RSS (`resource.getrusage`, recorded after the imports, the data and each step of `convert`) is its own:
"memory" (the folder decoded into RAM, S's outputs cached: the fast path) and "stream" (the folder read per batch
by DataLoader workers, S recomputed per batch where its outputs do not fit in `--budget`).
Run: .venv/bin/python benchmarks/streaming_memory.py [--per-class 300] [--size 64] [--budget 8MB] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dynacnn.cpcnn import pipeline
from dynacnn.cpcnn.config import CPCNNConfig
from dynacnn.data import load_dataset
from dynacnn.io import ensure_dir, write_json
from dynacnn.models import build_resnet

STEPS = (
    pipeline.cluster,
    pipeline.choose_split_point,
    pipeline.cache_outputs,
    pipeline.train_clustifier,
    pipeline.train_heads,
    pipeline.choose_point,
    pipeline.measure_test,
)
"""`convert`'s steps after `prepare` (saving, which writes files, is left out)."""


def write_folder(root: Path, classes: int, per_class: int, size: int) -> int:
    """root/{train,test}/c<k>/<i>.png: smooth class-tinted noise; returns the bytes on disk."""
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("test", max(2, per_class // 5))):
        for k in range(classes):
            folder = ensure_dir(root / split / f"c{k}")
            for i in range(count):
                pixels = rng.normal(25 * k, 50, (size // 4, size // 4, 3)).clip(0, 255).astype(np.uint8)
                Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR).save(folder / f"{i:04d}.png")
    return sum(path.stat().st_size for path in root.rglob("*.png"))


def peak_rss() -> int:
    """Peak resident set size of this process, in bytes (DataLoader workers are processes of their own)."""
    return 1024 * resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def run_mode(mode: str, root: Path, out: Path, budget: str, workers: int, classes: int) -> dict:
    """One conversion in this process, step by step as `convert` runs them; the peak RSS after each step."""
    torch.manual_seed(0)
    backbone = build_resnet("resnet18", classes, 3, 0.25, "small-pool").eval()
    peaks = {"imports": peak_rss()}
    started = time.perf_counter()
    options = {"stream": True, "num_workers": workers} if mode == "stream" else {}
    data = load_dataset("imagefolder", root, **options)
    peaks["load_dataset"] = peak_rss()
    config = CPCNNConfig(
        quick=True,
        split="layer1",
        configs="clustifier:LC,C0:L22,C1:L22",
        memory_format="contiguous",
        max_drop=100.0,
        feature_memory=budget if mode == "stream" else "auto",
    )
    out = ensure_dir(out / mode)
    groups = [list(range(0, classes, 2)), list(range(1, classes, 2))]  # two hyper-classes: no clustering needed
    write_json(out / "clusters.json", {"hyper_classes": [{"classes": group} for group in groups]})
    conversion = pipeline.prepare(backbone, data, out, config, "cpu", False, None)
    peaks["prepare"] = peak_rss()
    for step in STEPS:
        step(conversion)
        peaks[step.__name__] = peak_rss()
    return {"mode": mode, "peaks": peaks, "seconds": time.perf_counter() - started, "features": conversion.features}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=300)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--budget", default="8MB")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--mode", choices=("memory", "stream"), help="(internal) run one mode, print JSON")
    parser.add_argument("--root", type=Path, help="(internal) the folder")
    args = parser.parse_args()
    if args.mode is not None:
        with tempfile.TemporaryDirectory() as out:
            row = run_mode(args.mode, args.root, Path(out), args.budget, args.workers, args.classes)
        print(json.dumps(row))
        return
    with tempfile.TemporaryDirectory(prefix="dynacnn-stream-") as folder:
        root = Path(folder)
        on_disk = write_folder(root, args.classes, args.per_class, args.size)
        count = sum(1 for _ in root.rglob("*.png"))
        decoded = count * 3 * args.size * args.size
        print(
            f"folder: {count} images of {args.size} px, {on_disk / 2**20:.1f} MiB on disk, {decoded / 2**20:.1f} MiB decoded"
        )
        for mode in ("memory", "stream"):
            command = [sys.executable, __file__, "--mode", mode, "--root", str(root), "--budget", args.budget]
            command += ["--workers", str(args.workers), "--classes", str(args.classes)]
            row = json.loads(
                subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1]
            )
            features, peaks = row["features"], row["peaks"]
            cached = sum(size for part, size in features["bytes"].items() if features["modes"][part] == "cache")
            print(
                f"{mode}: {row['seconds']:.0f} s; budget {features['budget_bytes'] / 2**20:.1f} MiB, S's outputs "
                f"{sum(features['bytes'].values()) / 2**20:.1f} MiB ({cached / 2**20:.1f} MiB cached), {features['modes']}"
            )
            print(
                "  peak RSS after " + ", ".join(f"{step} {peak / 2**20:.0f}" for step, peak in peaks.items()) + " MiB"
            )


if __name__ == "__main__":
    main()
