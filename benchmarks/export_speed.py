"""Benchmark (not a test): PyTorch routed vs ONNX Runtime routed vs each base exported the same way, images/s.

For a CP-CNN (`--cpcnn DIR`, base: the run it was converted from, or `--base RUN`) and/or an MS-CNN (`--mscnn DIR`
with its chosen policy, base: the same network under the full policy), four contenders are timed with
`dynacnn.timing.measure` at batch 1, 32 and 256 (paired, interleaved chunks, medians): the base and the routed
model in PyTorch (BatchNorm folded, channels_last on the CPU, as `dynacnn bench` runs them) and both exported
(`dynacnn export`) and run with `dynacnn.runtime` on ONNX Runtime with as many threads as torch. Speed-ups are
against the PyTorch base (median of per-chunk ratios); "ort x" is the routed model's images/s over the exported
base's. The routed outputs' agreement (probabilities, top-1, heads or exits) is printed too.
`--tiny` builds small random models instead, only to check that the script works.
Run: .venv/bin/python benchmarks/export_speed.py --cpcnn runs/demo/cpcnn --mscnn runs/demo/mscnn [--out bench.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dynacnn.cpcnn.compress import build_head, shared_part
from dynacnn.cpcnn.model import CPCNN
from dynacnn.cpcnn.serialize import load_cpcnn
from dynacnn.export import export_cpcnn, export_directory, export_mscnn, export_plain, ort_speedups, runtime_contender
from dynacnn.io import read_json
from dynacnn.models import build_resnet
from dynacnn.models.fold import fold_batchnorm
from dynacnn.models.layout import device_layout
from dynacnn.mscnn.model import MSCNN, MSCNNConfig, StageConfig
from dynacnn.mscnn.policies import full_policy, tp_policy
from dynacnn.mscnn.routed import EarlyExitMSCNN
from dynacnn.mscnn.serialize import load_mscnn
from dynacnn.runs import DataSpec, load_run
from dynacnn.runtime import load
from dynacnn.timing import Contender, measure
from dynacnn.train import ImageBatches

BATCH_SIZES = (1, 32, 256)


def test_images(data: dict[str, Any], count: int) -> torch.Tensor:
    """The first `count` normalised test images of a recorded data spec."""
    splits = DataSpec(**data).load()
    batches = ImageBatches(splits.test, splits.info, 256)(None, torch.device("cpu"))
    return torch.cat([x for x, _ in batches])[:count]


def agreement(torch_out: Any, ort_out: Any, detail: str) -> dict[str, float]:
    """Routed PyTorch vs ONNX Runtime on the same images: largest probability gap, top-1 and routing agreement."""
    probs = torch_out.probs.numpy()
    return {
        "max_abs_prob_diff": float(np.abs(probs - ort_out.probs).max()),
        "top1_agreement": float((probs.argmax(1) == ort_out.probs.argmax(1)).mean()),
        f"{detail}_agreement": float(
            np.all(
                getattr(torch_out, detail).numpy().reshape(len(probs), -1)
                == getattr(ort_out, detail).reshape(len(probs), -1),
                1,
            ).mean()
        ),
        "macs_agreement": float((torch_out.macs.numpy() == ort_out.macs).mean()),
    }


def compare(
    name: str,
    base: torch.nn.Module,
    routed: torch.nn.Module,
    exports: tuple[Path, Path],
    images: torch.Tensor,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Time the four contenders of one method; check the routed outputs agree."""
    threads = args.threads or torch.get_num_threads()
    base_rt, routed_rt = (load(path, threads=threads) for path in exports)
    detail = "active" if name == "cpcnn" else "exit_stage"
    agree = agreement(routed.route(images), routed_rt.run(images.numpy()), detail)
    routed_macs = float(routed_rt.run(images.numpy()).macs.mean())
    base_macs = float(base_rt.run(images[:1].numpy()).macs.mean())
    layout_images = device_layout(images.clone(), "cpu")
    contenders = [
        Contender("base-torch", fold_batchnorm(device_layout(base, "cpu")), base_macs),
        Contender(f"{name}-torch", fold_batchnorm(device_layout(routed, "cpu")), routed_macs),
        runtime_contender("base-ort", base_rt, base_macs),
        runtime_contender(f"{name}-ort", routed_rt, routed_macs),
    ]
    rows = measure(
        contenders,
        layout_images,
        BATCH_SIZES,
        repeats=args.repeats,
        max_images_batch1=args.batch1_images,
        chunk_batches=2,
    )
    return {"agreement": agree, "rows": rows, "ort_speedups": ort_speedups(rows)}


def print_table(name: str, result: dict[str, Any]) -> None:
    print(f"\n{name}: agreement PyTorch vs ONNX Runtime {json.dumps(result['agreement'])}")
    print(f"{'model':<14}{'batch':>6}{'images/s':>12}{'vs torch base':>15}{'ort x':>8}")
    for row in result["rows"]:
        batch = int(row["batch_size"])
        ort = result["ort_speedups"][batch].get(row["model"])
        ort_text = f"{ort:.2f}" if ort is not None and row["model"].endswith("-ort") else ""
        print(
            f"{row['model']:<14}{batch:>6}{row['images_per_s']:>12.0f}{row['wall_speedup_median']:>14.2f}x{ort_text:>8}"
        )


def tiny_cpcnn(root: Path) -> tuple[torch.nn.Module, CPCNN, torch.Tensor]:
    """A random 16 px CP-CNN with spread-out clustifier probabilities, exported to root/{base,cpcnn}."""
    torch.manual_seed(0)
    shape, members = (3, 16, 16), [[0, 3, 5], [1, 6], [2, 4], [7, 8, 9]]
    backbone = build_resnet("resnet18", 10, 3, 0.125, "small").eval()
    heads = [build_head(backbone, "layer2", "L0", len(g), shape, g) for g in members]
    clustifier = build_head(backbone, "layer2", "LC", 4, shape)
    model = CPCNN(shared_part(backbone, "layer2"), clustifier, heads, members, torch.eye(4) * 100 + 1, shape, tau=0.8)
    images = torch.randn(512, *shape)
    model.clustifier.fc.weight.data.mul_(3 / model.clustifier(model.shared(images[:64])).std())
    export_plain(backbone, root / "base", shape)
    export_cpcnn(model, root / "cpcnn")
    return backbone, model, images


def tiny_mscnn(root: Path) -> tuple[EarlyExitMSCNN, EarlyExitMSCNN, torch.Tensor]:
    """A random 3-stage 28 px MS-CNN under a TP policy exiting about half the images per stage."""
    torch.manual_seed(0)
    config = MSCNNConfig(tuple(StageConfig(b) for b in ("LL", "LH", "HL")), 1, 10).validate()
    network = MSCNN(config).eval()
    images = torch.randn(512, 1, 28, 28)
    for head in network.heads:
        head.fc.weight.data.mul_(8)
    with torch.no_grad():
        confidences = [out.softmax(1).topk(5, 1).values.sum(1).sort().values for out in network(images[:256])[:-1]]
    conf = [float(c[127:129].mean()) for c in confidences]  # between two observed values: no image sits on it
    routed = EarlyExitMSCNN(network, tp_policy(tuple(conf), 3, 10, 5), input_shape=(1, 28, 28))
    base = EarlyExitMSCNN(network, full_policy(3, 10), input_shape=(1, 28, 28))
    export_mscnn(base, root / "mscnn_base", (1, 28, 28))
    export_mscnn(routed, root / "mscnn", (1, 28, 28))
    return base, routed, images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpcnn", type=Path, help="a CP-CNN directory (dynacnn cpcnn --out)")
    parser.add_argument("--base", type=Path, help="the CP-CNN's base run (default: the run it was converted from)")
    parser.add_argument("--mscnn", type=Path, help="an MS-CNN directory (dynacnn mscnn --out)")
    parser.add_argument("--tiny", action="store_true", help="small random models, only to check the script")
    parser.add_argument("--images", type=int, default=2560, help="test images timed at batch 32 and 256")
    parser.add_argument("--batch1-images", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: torch's)")
    parser.add_argument("--export-dir", type=Path, default=None, help="where to export (default: a temporary dir)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args()
    results: dict[str, Any] = {"threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        root = args.export_dir or Path(tmp)
        if args.tiny:
            base, cpcnn, images = tiny_cpcnn(root)
            results["cpcnn"] = compare("cpcnn", base, cpcnn, (root / "base", root / "cpcnn"), images, args)
            base, mscnn, images = tiny_mscnn(root)
            results["mscnn"] = compare("mscnn", base, mscnn, (root / "mscnn_base", root / "mscnn"), images, args)
        if args.cpcnn:
            meta = read_json(args.cpcnn / "cpcnn_model.json")["backbone"]
            if args.base is None and "run_dir" not in meta:
                parser.error(f"{args.cpcnn} was not converted from a run directory; give its base run with --base")
            base_dir = args.base or Path(meta["run_dir"])
            export_directory(root / "base", run=base_dir)
            export_directory(root / "cpcnn", cpcnn=args.cpcnn)
            images = test_images(meta["data"], args.images)
            base, cpcnn = load_run(base_dir).model, load_cpcnn(args.cpcnn)
            results["cpcnn"] = compare("cpcnn", base, cpcnn, (root / "base", root / "cpcnn"), images, args)
        if args.mscnn:
            routed = load_mscnn(args.mscnn)
            base = load_mscnn(args.mscnn, policy="full")
            images = test_images(read_json(args.mscnn / "model.json")["data"], args.images)
            export_directory(root / "mscnn", mscnn=args.mscnn)
            export_mscnn(base, root / "mscnn_base", tuple(images.shape[1:]))
            results["mscnn"] = compare("mscnn", base, routed, (root / "mscnn_base", root / "mscnn"), images, args)
    for name in ("cpcnn", "mscnn"):
        if name in results:
            print_table(name, results[name])
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
