"""Benchmark (not a test): a user's own torchvision ResNet-18 and image folder, converted by `dynacnn cpcnn`.

Issue 16, item 6. Writes CIFAR-10 (`--cifar10-dir`: the python pickle directory) or, offline, Fashion-MNIST as an
image folder of PNGs (`train/` and `test/` class folders; RGB or grayscale as the data is; `--train-limit` /
`--test-limit` stratified images, the folder's calibration split held out of `train/` by the loader), then:
1. trains torchvision's `resnet18(num_classes=K)` on that folder at `--image-size` px with `dynacnn.train.fit` and
   `ImageBatches`, the training loop `dynacnn train` uses (`dynacnn train --arch` builds only dynacnn's own ResNets),
   and saves its state dict as safetensors. `--stem cifar` is the usual 32 px adaptation (conv1 3x3 stride 1, no
   max-pool); `dynacnn.models.load_backbone` builds torchvision's standard stem (conv1 7x7 stride 2 + max-pool), so
   `--stem auto` (default) uses the CIFAR stem only when `load_backbone` reproduces its outputs, else the standard
   stem at the same size (printed);
2. converts it with the command line a user types (`python -m dynacnn cpcnn --checkpoint ... --arch
   torchvision:resnet18 --data imagefolder ...`) in a child process, with `--feature-memory` set to `--budget-fraction`
   of the size of S's outputs (train + calibration + test, as `dynacnn.cpcnn.cache.shared_outputs` counts them) so
   that part of them is recomputed per batch; the child's peak RSS comes from `os.wait4` (the largest process: the
   conversion itself, or one DataLoader worker with `--stream`);
3. prints a table and writes `<out>/own_model.json`: test top-1 of base and CP-CNN and the change, MACs per image and
   the saving, images/s of each (cpcnn.json's chosen point, timed side by side), peak RSS, budget, S's outputs, the
   folder's size and the wall time of each step.
Run (defaults: about 10-15 minutes on 2 CPU cores):
    .venv/bin/python benchmarks/own_model.py [--cifar10-dir DIR] [--train-limit 10000] [--epochs 3] [--stream]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from dynacnn.cpcnn.compress import SPLIT_POINTS, shared_part
from dynacnn.data import load_dataset
from dynacnn.errors import CheckpointError
from dynacnn.io import ensure_dir, read_json, write_json
from dynacnn.models import load_backbone
from dynacnn.train import ImageBatches, TrainConfig, evaluate, fit, resolve_device

ARCH = "torchvision:resnet18"


def write_folder(data: Any, root: Path) -> dict[str, int]:
    """root/{train,test}/<NN_class>/<index>.png from a dataset's train and test splits; image counts and bytes."""
    names = [
        f"{k:02d}_{''.join(c if c.isalnum() else '-' for c in name)}" for k, name in enumerate(data.info.class_names)
    ]
    counts = {}
    for part in ("train", "test"):
        split = getattr(data, part)
        for name in names:
            ensure_dir(root / part / name)
        images = split.images.numpy()
        for image, label, index in zip(images, split.labels.tolist(), split.indices.tolist()):
            pixels = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
            Image.fromarray(np.ascontiguousarray(pixels)).save(root / part / names[label] / f"{index:05d}.png")
        counts[f"{part}_images"] = len(split)
    counts["bytes_on_disk"] = sum(path.stat().st_size for path in root.rglob("*.png"))
    return counts


def build_model(stem: str, num_classes: int, in_channels: int) -> nn.Module:
    """torchvision's ResNet-18 with `in_channels` inputs: the standard stem, or the CIFAR one (3x3/1 conv, no pool)."""
    model = torchvision.models.resnet18(num_classes=num_classes)
    if stem == "cifar":
        model.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


def save_state(model: nn.Module, path: Path) -> Path:
    """The model's state dict as safetensors (CPU, contiguous), as a user would save it."""
    save_file({key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}, str(path))
    return path


def choose_stem(stem: str, num_classes: int, in_channels: int, size: int) -> tuple[str, str]:
    """(stem, why): "cifar" under `auto` only if `load_backbone` gives back the CIFAR model's outputs."""
    if stem != "auto":
        return stem, "given"
    model = build_model("cifar", num_classes, in_channels).eval()
    with tempfile.TemporaryDirectory() as folder:
        path = save_state(model, Path(folder) / "probe.safetensors")
        try:
            loaded = load_backbone(ARCH, path)
        except CheckpointError as exc:
            return "standard", f"load_backbone refuses a CIFAR-stem checkpoint: {exc}"
    x = torch.randn(2, in_channels, size, size)
    with torch.no_grad():
        if torch.allclose(loaded(x), model(x), atol=1e-5):
            return "cifar", "load_backbone reproduces the CIFAR stem"
    return "standard", "load_backbone loads a CIFAR-stem checkpoint but with another stem (outputs differ)"


def feature_sizes(model: nn.Module, split: str, data: Any) -> dict[str, int]:
    """Bytes of S's float32 outputs per part, counted as `shared_outputs` does (train: with the teacher's logits)."""
    with torch.no_grad():
        per_image = shared_part(model.cpu().eval(), split)(torch.zeros(1, *data.info.input_shape)).numel() * 4
    teacher = model.fc.out_features * 4
    return {
        "train": len(data.train) * (per_image + teacher),
        "calib": len(data.calib) * per_image,
        "test": len(data.test) * per_image,
    }


def run_child(command: list[str], stdout: Path) -> tuple[int, int, float]:
    """Run `command`, stdout to a file; (exit status, peak RSS in bytes of its largest process, seconds)."""
    started = time.perf_counter()
    with open(stdout, "w") as sink:
        child = subprocess.Popen(command, stdout=sink)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    return child.returncode, usage.ru_maxrss * 1024, time.perf_counter() - started


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cifar10-dir", type=Path, help="CIFAR-10 python pickle directory (default: Fashion-MNIST)")
    parser.add_argument("--train-limit", type=int, default=10000, help="training images written to the folder")
    parser.add_argument("--test-limit", type=int, default=2000, help="test images written to the folder")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--stem", choices=("auto", "cifar", "standard"), default="auto")
    parser.add_argument("--epochs", type=int, default=3, help="base model training epochs")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--stream", action="store_true", help="read the folder per batch (training and conversion)")
    parser.add_argument("--split", choices=SPLIT_POINTS, default="layer2", help="the CP-CNN's shared part S")
    parser.add_argument("--head-epochs", type=int, default=2, help="cpcnn --epochs: clustifier and heads")
    parser.add_argument("--max-drop", type=float, default=0.5)
    parser.add_argument("--budget-fraction", type=float, default=0.5, help="--feature-memory / size of S's outputs")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-own-model"))
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    out = ensure_dir(args.out)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    source_name = "fashion-mnist" if args.cifar10_dir is None else "cifar10"
    source = load_dataset(source_name, args.cifar10_dir, train_limit=args.train_limit, test_limit=args.test_limit)
    mean, std = source.info.mean, source.info.std
    folder = out / "imagefolder"
    if folder.exists():
        raise SystemExit(f"{folder} exists; remove it or pass another --out")
    written = write_folder(source, folder)
    del source
    seconds["write_folder"] = time.perf_counter() - started

    started = time.perf_counter()
    options = {"image_size": args.image_size, "mean": mean, "std": std, "stream": args.stream}
    data = load_dataset("imagefolder", folder, seed=args.seed, **options)
    info = data.info
    seconds["load_folder"] = time.perf_counter() - started

    stem, why = choose_stem(args.stem, info.num_classes, info.input_shape[0], args.image_size)
    print(f"stem: {stem} ({why})", flush=True)
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    model = build_model(stem, info.num_classes, info.input_shape[0])
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    started = time.perf_counter()
    train_data = ImageBatches(data.train, info, args.batch_size, shuffle=True, augment=True)
    fit(model, train_data, config, calib_data=ImageBatches(data.calib, info, 512), device=device, desc="base")
    seconds["train_base"] = time.perf_counter() - started
    started = time.perf_counter()
    base_test = evaluate(model.eval(), ImageBatches(data.test, info, 512), device)
    seconds["evaluate_base"] = time.perf_counter() - started
    checkpoint = save_state(model, out / "resnet18.safetensors")

    sizes = feature_sizes(model, args.split, data)
    budget = int(args.budget_fraction * sum(sizes.values()))
    convert_out = out / "cpcnn"
    command = [sys.executable, "-m", "dynacnn", "cpcnn", "--checkpoint", str(checkpoint), "--arch", ARCH]
    command += ["--data", "imagefolder", "--data-dir", str(folder), "--image-size", str(args.image_size)]
    command += ["--mean", *map(str, mean), "--std", *map(str, std), "--stream" if args.stream else "--no-stream"]
    command += ["--split", args.split, "--epochs", str(args.head_epochs), "--max-drop", str(args.max_drop)]
    command += ["--feature-memory", str(budget), "--seed", str(args.seed), "--device", args.device]
    command += ["--out", str(convert_out), "--json"]
    print("converting:", " ".join(command), flush=True)
    status, peak, seconds["convert"] = run_child(command, out / "cpcnn_stdout.json")
    if status != 0:
        raise SystemExit(f"the conversion failed with exit status {status}; its output is above")

    result = read_json(convert_out / "cpcnn.json")
    base, chosen, features = result["base"], result["chosen"], result["features"]
    decoded = (len(data.train) + len(data.calib) + len(data.test)) * int(np.prod(info.input_shape))
    report = {
        "data": {"source": source_name, **written, "decoded_bytes": decoded, "image_size": args.image_size},
        "stem": {"used": stem, "why": why},
        "base": {
            "test_top1": base["top1"],
            "test_top1_in_script": base_test["top1"],
            "macs_per_image": base["macs_per_image"],
            "images_per_s": chosen["base_images_per_s"],
        },
        "cpcnn": {
            "test_top1": chosen["top1"],
            "macs_per_image": chosen["macs_per_image"],
            "images_per_s": chosen["images_per_s"],
            "tau": chosen["tau"],
            "split": result["split"],
            "clusters": result["clusters"],
            "configs": result["configs"],
        },
        "top1_change_points": 100 * (chosen["top1"] - base["top1"]),
        "mac_saving": chosen["mac_saving"],
        "speedup": chosen["speedup"],
        "conversion_peak_rss_bytes": peak,
        "features": features,
        "features_expected_bytes": sizes,
        "seconds": seconds,
        "command": command,
        "settings": vars(args) | {"cifar10_dir": None if args.cifar10_dir is None else str(args.cifar10_dir)},
    }
    report["settings"]["out"] = str(args.out)
    write_json(out / "own_model.json", report)
    print_table(report)


def print_table(report: dict[str, Any]) -> None:
    """The figures as a plain table on stdout."""
    base, cp, features, mib = report["base"], report["cpcnn"], report["features"], 2**20
    recomputed = [part for part, mode in features["modes"].items() if mode == "recompute"]
    data = report["data"]
    rows = [
        ("", "base", "CP-CNN"),
        ("test top-1", f"{base['test_top1']:.4f}", f"{cp['test_top1']:.4f}"),
        ("MACs / image", f"{base['macs_per_image'] / 1e6:.2f} M", f"{cp['macs_per_image'] / 1e6:.2f} M"),
        ("images / s", f"{base['images_per_s']:.0f}", f"{cp['images_per_s']:.0f}"),
    ]
    print()
    for row in rows:
        print(f"{row[0]:<16}{row[1]:>14}{row[2]:>14}")
    print(
        f"top-1 change {report['top1_change_points']:+.2f} points, MAC saving {100 * report['mac_saving']:.1f} %, "
        f"wall speedup {report['speedup']:.2f}x (split {cp['split']}, tau {cp['tau']}, {len(cp['clusters'])} "
        "hyper-classes)"
    )
    print(
        f"folder: {data['train_images'] + data['test_images']} {data['source']} images, "
        f"{data['bytes_on_disk'] / mib:.1f} MiB on disk, {data['decoded_bytes'] / mib:.1f} MiB decoded at "
        f"{data['image_size']} px; stem {report['stem']['used']}"
    )
    print(
        f"conversion peak RSS {report['conversion_peak_rss_bytes'] / mib:.0f} MiB; feature budget "
        f"{features['budget_bytes'] / mib:.1f} MiB, S's outputs {sum(features['bytes'].values()) / mib:.1f} MiB "
        f"({', '.join(f'{part} {mode}' for part, mode in features['modes'].items())})"
    )
    if not recomputed:
        print("warning: every part of S's outputs fit in the budget; lower --budget-fraction to recompute some")
    print("seconds: " + ", ".join(f"{step} {value:.0f}" for step, value in report["seconds"].items()))
    print(f"written: {Path(report['settings']['out']) / 'own_model.json'}")


if __name__ == "__main__":
    main()
