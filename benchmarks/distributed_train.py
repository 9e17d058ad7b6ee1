"""Benchmark (not a test): images/s of `dynacnn train` with 1 and 2 processes on this machine, and the scaling.

Three runs of the same command (Fashion-MNIST subset, ResNet-18 width 0.25, batch 128), each a fresh output
directory; the figure is the last epoch's training images/s from metrics.json (the first epoch warms up):
1 process x 1 thread, 1 process x 2 threads, and `torchrun --nproc_per_node 2` (2 processes x 1 thread, gloo).
Scaling efficiency = (2-process images/s) / (2 x 1-process-1-thread images/s). With `--recipe`, also one process's
training images/s of a full-width ResNet-18 and ResNet-50 at 224 px (random images, 1000 classes), which
docs/distributed.md scales to GPU-hours.

Run: .venv/bin/python benchmarks/distributed_train.py [--train-limit 2048] [--epochs 2] [--recipe] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from dynacnn.cpcnn.compress import table1_reduction
from dynacnn.flops import count_macs
from dynacnn.models.external import build_external
from dynacnn.mscnn.costs import measure_costs
from dynacnn.mscnn.model import MSCNN, table2_config
from dynacnn.train import TensorBatches, TrainConfig, fit

TIMEOUT_S = 1800
IMAGENET_TRAIN = 1_281_167
BASE_EPOCHS, HEAD_EPOCHS, MSCNN_EPOCHS = 90, 16, 90
GPU_RESNET50_IMAGES_PER_S = 2470
"""Assumption: one A100 80GB trains ResNet-50 v1.5 at 2470 images/s with mixed precision (NVIDIA
DeepLearningExamples, PyTorch ConvNets README, 1 GPU, AMP). Another model: this times ResNet-50's training MACs over
its own (a lower bound of its hours: small networks use the GPU less well), or at most this rate (the input pipeline
that fed that run: an upper bound for networks cheaper than ResNet-50)."""
EIGHT_GPU_EFFICIENCY = 16621 / (8 * 2470)
"""Assumption: 8 GPUs of one node scale as in the same table (16621 images/s with 8 A100s)."""


def train_images_per_s(out: Path, processes: int, threads: int, args: argparse.Namespace) -> float:
    """The last epoch's training images/s of one `dynacnn train` run."""
    command = ["train", "--data", "fashion-mnist", "--train-limit", str(args.train_limit), "--width", "0.25"]
    command += [
        "--epochs",
        str(args.epochs),
        "--batch-size",
        "128",
        "--no-augment",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]
    if processes == 1:
        argv = [sys.executable, "-m", "dynacnn", *command]
    else:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
        argv = [*launcher, "-m", "dynacnn", "--", *command]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run(argv, check=True, env=env, timeout=TIMEOUT_S, capture_output=True)
    return json.loads((out / "metrics.json").read_text())["history"][-1]["images_per_s"]


def recipe_images_per_s(arch: str, batch: int, steps: int) -> dict[str, float]:
    """One process's training images/s of torchvision's `arch` at 224 px (1000 classes), via `fit`."""
    torch.manual_seed(0)
    model = build_external(f"torchvision:{arch}", 1000)
    images, labels = torch.randn(batch * steps, 3, 224, 224), torch.randint(0, 1000, (batch * steps,))
    config = TrainConfig(epochs=1, batch_size=batch, lr=0.01, schedule="cosine", augment=False)
    fit(model, TensorBatches(images[:batch], labels[:batch], batch), config, device="cpu")  # warm-up
    history = fit(model, TensorBatches(images, labels, batch), config, device="cpu").history
    macs = count_macs(model, torch.zeros(1, 3, 224, 224)).macs_per_image
    return {"images_per_s": history[-1]["images_per_s"], "forward_macs": macs, "threads": torch.get_num_threads()}


def gpu_hours(images: float, train_macs: float, resnet50_train_macs: float) -> str:
    """GPU-hours of `images` training images of `train_macs` MACs each (forward + backward): MAC-scaled to
    input-bound, per the assumptions."""
    scaled = images / (GPU_RESNET50_IMAGES_PER_S * resnet50_train_macs / train_macs) / 3600
    bound = images / (GPU_RESNET50_IMAGES_PER_S * min(1.0, resnet50_train_macs / train_macs)) / 3600
    return f"{scaled:.1f}" if abs(bound - scaled) < 0.05 else f"{scaled:.1f}-{bound:.1f}"


def recipe_tables(cpu: dict[str, dict[str, float]] | None) -> str:
    """The ImageNet recipe on paper (docs/distributed.md): MACs per image at 224 px and GPU-hours, as markdown."""
    rows = {arch: table1_reduction(1000, f"torchvision:{arch}", 224) for arch in ("resnet18", "resnet50")}
    r50 = 3 * rows["resnet50"][0]["macs"]  # training MACs per image: forward + backward (twice the forward)
    lines = ["| base network | MACs/image | training MACs/image | GPU-hours, 90 epochs | 8 GPUs: hours | this CPU |"]
    lines.append("| --- | ---: | ---: | ---: | ---: | ---: |")
    for arch, table in rows.items():
        macs, hours = table[0]["macs"], gpu_hours(BASE_EPOCHS * IMAGENET_TRAIN, 3 * table[0]["macs"], r50)
        here = f"{BASE_EPOCHS * IMAGENET_TRAIN / cpu[arch]['images_per_s'] / 86400 / 365:.1f} years" if cpu else "-"
        wall = "-".join(f"{float(h) / 8 / EIGHT_GPU_EFFICIENCY:.1f}" for h in hours.split("-"))
        lines.append(f"| {arch} | {macs / 1e9:.2f} G | {3 * macs / 1e9:.2f} G | {hours} | {wall} | {here} |")
    lines += ["", "| CP-CNN head (S = stem) | " + " | ".join(f"{arch}: MACs/image, reduction" for arch in rows)]
    lines[-1] += f" | {' | '.join(f'{arch}: GPU-hours, {HEAD_EPOCHS} epochs' for arch in rows)} |"
    lines.append("| --- |" + " ---: |" * 4)
    for index, name in enumerate(row["name"] for row in rows["resnet18"]):
        cells, costs = [], []
        for table in rows.values():
            row = table[index]
            cells.append(f"{row['macs'] / 1e9:.3f} G, {row['reduction']:.1%}")
            train_macs = row["shared_macs"] + 3 * row["head_macs"]  # S runs forward only (frozen)
            costs.append(gpu_hours(HEAD_EPOCHS * IMAGENET_TRAIN, train_macs, r50))
        lines.append(f"| {name} | {' | '.join(cells)} | {' | '.join(costs)} |")
    stages = measure_costs(MSCNN(table2_config(1000, 3)).eval(), (3, 224, 224)).stages
    exits = [sum(stage.macs for stage in stages[: s + 1]) for s in range(len(stages))]
    lines += ["", "| MS-CNN (Table II, 7 stages) exit after stage | " + " | ".join(map(str, range(1, 8))) + " |"]
    lines += ["| --- |" + " ---: |" * 7, "| MACs/image | " + " | ".join(f"{m / 1e6:.0f} M" for m in exits) + " |"]
    hours = gpu_hours(MSCNN_EPOCHS * IMAGENET_TRAIN, 3 * exits[-1], r50)
    lines += ["", f"MS-CNN joint training, {MSCNN_EPOCHS} epochs: {hours} GPU-hours (MAC-scaled to input-bound)."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-limit", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--recipe", action="store_true", help="also time full ResNet-18 / ResNet-50 at 224 px")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    figures: dict[str, object] = {"cpus": os.cpu_count(), "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        runs = {
            "1 process x 1 thread": (1, 1),
            "1 process x 2 threads": (1, 2),
            "2 processes x 1 thread (torchrun, gloo)": (2, 1),
        }
        speeds = {
            name: train_images_per_s(Path(tmp) / str(i), *how, args) for i, (name, how) in enumerate(runs.items())
        }
    one, two = speeds["1 process x 1 thread"], speeds["2 processes x 1 thread (torchrun, gloo)"]
    figures["train_images_per_s"] = speeds
    figures["scaling_efficiency"] = two / (2 * one)
    figures["speedup_over_1_process_2_threads"] = two / speeds["1 process x 2 threads"]
    print("| run | images/s |\n| --- | ---: |")
    for name, value in speeds.items():
        print(f"| {name} | {value:.0f} |")
    print(f"scaling efficiency {figures['scaling_efficiency']:.0%}; ", end="")
    print(f"2 processes / 1 process x 2 threads: {figures['speedup_over_1_process_2_threads']:.2f}x")
    if args.recipe:
        figures["recipe"] = {arch: recipe_images_per_s(arch, 16, 3) for arch in ("resnet18", "resnet50")}
        for arch, row in figures["recipe"].items():
            print(f"{arch} 224 px: {row['images_per_s']:.2f} training images/s ({row['threads']} threads)")
        print(recipe_tables(figures["recipe"]))
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
