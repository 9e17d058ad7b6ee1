"""Benchmark: the MS-CNN on Fashion-MNIST against its targets.

Trains (or resumes) `run_mscnn`, then checks: full MS-CNN test top-1 within 1.5 points of the baseline
ResNet; the chosen policy at most 40% of the full network's MACs per image, test top-1 within 0.5
points of the full network, and at least 2x its images/s (batch 256, measured side by side in the run).

    .venv/bin/python benchmarks/mscnn_fashion.py --out runs/mscnn [--resume] [--baseline runs/base]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from dynacnn.baseline import evaluate_run
from dynacnn.io import write_json
from dynacnn.mscnn.config import MSCNNRunConfig
from dynacnn.mscnn.pipeline import run_mscnn

ASSUMED_BASELINE_TOP1 = 0.927


def baseline_top1(run_dir: Path, given: float | None) -> tuple[float, str]:
    """The baseline ResNet's test top-1: given, evaluated from its run directory, or the issue's assumption."""
    if given is not None:
        return given, "given"
    if (run_dir / "run.json").exists():
        return evaluate_run(run_dir, device="cpu")["top1"], f"evaluated {run_dir}"
    return ASSUMED_BASELINE_TOP1, "assumed (no baseline run found)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/mscnn"))
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--max-drop", type=float, default=0.5)
    parser.add_argument("--baseline", type=Path, default=Path("runs/base"))
    parser.add_argument("--baseline-top1", type=float, default=None)
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    started = time.perf_counter()
    config = MSCNNRunConfig(epochs=args.epochs, max_drop=args.max_drop)
    result = run_mscnn(args.out, config, data="fashion-mnist", device="cpu", resume=args.resume)
    seconds = time.perf_counter() - started
    base, source = baseline_top1(args.baseline, args.baseline_top1)
    full, chosen = result["full"], result["chosen"]
    checks = {
        "full_top1_within_1.5_points_of_baseline": full["top1"] >= base - 0.015,
        "chosen_macs_at_most_40%_of_full": chosen["macs_fraction"] <= 0.40,
        "chosen_top1_within_0.5_points_of_full": chosen["top1"] >= full["top1"] - 0.005,
        "chosen_images_per_s_at_least_2x_full": chosen["speedup"] >= 2.0,
    }
    summary = {
        "baseline_top1": base,
        "baseline_source": source,
        "full_top1": full["top1"],
        "full_macs_per_image": full["macs_per_image"],
        "stages": [{k: s[k] for k in ("stage", "band", "params", "macs", "top1")} for s in result["stages"]],
        "chosen": {
            k: chosen[k]
            for k in (
                "policy",
                "settings",
                "top1",
                "macs_per_image",
                "macs_fraction",
                "images_per_s",
                "speedup",
                "exit_fractions",
                "agreement_with_cached",
            )
        },
        "full_images_per_s": full["images_per_s"],
        "oracle": {k: result["oracle"][k] for k in ("top1", "macs_per_image")},
        "checks": checks,
        "seconds_this_process": seconds,
        "torch_threads": torch.get_num_threads(),
    }
    write_json(args.out / "benchmark.json", summary)
    print(
        f"baseline ResNet top-1 {base:.4f} ({source}); full MS-CNN {full['top1']:.4f} at {full['macs_per_image'] / 1e6:.2f} M MACs"
    )
    for stage in summary["stages"]:
        print(
            f"  stage {stage['stage']} ({stage['band']}): top-1 {stage['top1']:.4f}, {stage['macs'] / 1e6:.2f} M MACs, {stage['params']} params"
        )
    print(
        f"chosen {chosen['policy']} {chosen['settings']}: top-1 {chosen['top1']:.4f}, {chosen['macs_fraction']:.1%} of the MACs, "
        f"{chosen['images_per_s']:.0f} vs {full['images_per_s']:.0f} images/s ({chosen['speedup']:.2f}x)"
    )
    for name, ok in checks.items():
        print(f"  [{'pass' if ok else 'MISS'}] {name}")
    return 1 if args.strict and not all(checks.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
