"""Benchmark (not a test): the speed levers of issue 19 on a finished demo's models, measured side by side.

1. Runtimes: every model eager (PyTorch, BatchNorm folded, channels_last), with its static parts compiled by
   `torch.compile` (inductor, CPU: the base and the static ResNet whole, the CP-CNN's S, clustifier and heads, the
   MS-CNN's DWT and stage bodies; routing stays eager) and, with --onnx, exported to ONNX Runtime; all in one
   interleaved `dynacnn.timing.measure` at batch 32 and 256. Each routed model's speed-up and routing efficiency are
   also given against the base in the same runtime (the static networks get the same treatment as the routed ones).
   Compile time (the first pass at each batch size, minus eager's first pass) is reported apart.
2. The share of the CP-CNN's time spent in S (and in S + clustifier), eager, at batch 32 and 256.
3. Threads: 1 against the default for the sub-batch sizes routed parts run at (a CP-CNN head on S's features, an
   MS-CNN later stage on its DWT band), and the CP-CNN end to end with heads switched to 1 thread below 64 images.
Run: .venv/bin/python benchmarks/speed_levers.py --demo-dir runs/demo [--repeats 3] [--images 5000] [--no-onnx]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dynacnn.cpcnn.model import CPCNN, TrivialHead
from dynacnn.data import normalize
from dynacnn.experiments.bench import demo_contenders
from dynacnn.export import onnx_contenders
from dynacnn.models.layout import device_layout
from dynacnn.report.render import table
from dynacnn.runs import load_run
from dynacnn.timing import Contender, measure

BATCHES = (32, 256)
SMALL = (4, 16, 64)


def compile_parts(name: str, model: nn.Module) -> nn.Module:
    """A copy of `model` with its static parts compiled (inductor); routing code stays eager."""
    model = copy.deepcopy(model)
    if name == "cpcnn":
        model.shared = torch.compile(model.shared)
        model.clustifier = torch.compile(model.clustifier)
        for index, head in enumerate(model.heads):
            if not isinstance(head, (TrivialHead, CPCNN)):
                model.heads[index] = torch.compile(head)
        return model
    if name == "mscnn":
        network = model.network
        network.dwt = torch.compile(network.dwt)
        for index, body in enumerate(network.bodies):
            network.bodies[index] = torch.compile(body)
        return model
    return torch.compile(model)


@torch.inference_mode()
def first_pass(infer: Callable[[torch.Tensor], Any], images: torch.Tensor, batch: int) -> float:
    """Seconds of one pass over `images` at `batch` (the first pass of a compiled model includes its compiles)."""
    start = time.perf_counter()
    for begin in range(0, len(images), batch):
        infer(images[begin : begin + batch])
    return time.perf_counter() - start


def at_threads(infer: Callable[[torch.Tensor], Any], threads: int) -> Callable[[torch.Tensor], Any]:
    """`infer` run with `threads` intra-op threads (switched per call, as a per-sub-batch setting would be)."""

    def run(x: torch.Tensor) -> Any:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return infer(x)
        finally:
            torch.set_num_threads(before)

    return run


class ThreadsBySize(nn.Module):
    """A head run with one thread on sub-batches below `below` images, with the default count otherwise."""

    def __init__(self, module: nn.Module, below: int) -> None:
        super().__init__()
        self.module, self.below = module, below

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return at_threads(self.module, 1)(x) if len(x) < self.below else self.module(x)


def runtimes(out: Path, images: torch.Tensor, repeats: int, onnx: bool) -> dict[str, Any]:
    """Lever 1: eager, compiled (and ONNX Runtime) contenders of every model in one interleaved measurement."""
    eager = demo_contenders(out, tuple(images.shape[1:]), torch.device("cpu"))
    contenders = [Contender(f"{c.name}/eager", c.infer, c.macs_per_image) for c in eager]
    compile_seconds = {}
    for c in eager:
        compiled = compile_parts(c.name, c.infer)
        seconds = 0.0
        for batch in BATCHES:
            seconds += first_pass(compiled, images, batch) - first_pass(c.infer, images, batch)
        compile_seconds[c.name] = seconds
        contenders.append(Contender(f"{c.name}/compiled", compiled, c.macs_per_image))
    if onnx:
        for c in onnx_contenders(out, threads=torch.get_num_threads()):
            contenders.append(Contender(c.name.removesuffix("-ort") + "/ort", c.infer, c.macs_per_image))
    rows = measure(contenders, images, BATCHES, repeats=repeats)
    speed = {(r["model"], r["batch_size"]): r for r in rows}
    for row in rows:
        family = str(row["model"]).split("/")[1]
        base = speed[(f"base/{family}", row["batch_size"])]
        eager_row = speed[(str(row["model"]).split("/")[0] + "/eager", row["batch_size"])]
        row["vs_base_same_runtime"] = row["images_per_s"] / base["images_per_s"]
        row["vs_eager_same_model"] = row["images_per_s"] / eager_row["images_per_s"]
        row["efficiency_same_runtime"] = row["vs_base_same_runtime"] * row["macs_per_image"] / base["macs_per_image"]
    return {"rows": rows, "compile_seconds": compile_seconds}


def s_share(out: Path, images: torch.Tensor, repeats: int) -> dict[int, dict[str, float]]:
    """Lever 2: the CP-CNN's time in S and in S + clustifier, as paired ratios against the whole CP-CNN."""
    cpcnn = next(c for c in demo_contenders(out, tuple(images.shape[1:]), torch.device("cpu")) if c.name == "cpcnn")
    model = cpcnn.infer
    parts = [
        Contender("cpcnn", model, cpcnn.macs_per_image),
        Contender("S", model.shared, model.shared_macs),
        Contender("S+M", lambda x: model.clustifier(model.shared(x)), model.fixed_macs),
    ]
    rows = measure(parts, images, BATCHES, repeats=repeats)
    return {
        batch: {
            r["model"]: 1 / r["wall_speedup_median"] for r in rows if r["batch_size"] == batch and r["model"] != "cpcnn"
        }
        for batch in BATCHES
    }


def threads(out: Path, images: torch.Tensor, repeats: int) -> dict[str, Any]:
    """Lever 3: 1 thread against the default on small sub-batches of a CP-CNN head and an MS-CNN later stage,
    and the CP-CNN end to end with its heads at 1 thread below 64 images."""
    found = {c.name: c for c in demo_contenders(out, tuple(images.shape[1:]), torch.device("cpu"))}
    cpcnn, mscnn = found["cpcnn"].infer, found["mscnn"].infer.network
    default = torch.get_num_threads()
    with torch.inference_mode():
        features = cpcnn.shared(images[:2048])
        band = mscnn.dwt(images[:2048])[:, mscnn.band_index[-1]].contiguous(memory_format=torch.channels_last)
    small = {}
    for label, part, data in (("cpcnn head 0", cpcnn.heads[0], features), ("mscnn last stage", mscnn.bodies[-1], band)):
        pair = [Contender(f"{default} threads", part, 1.0), Contender("1 thread", at_threads(part, 1), 1.0)]
        rows = measure(pair, data, SMALL, repeats=repeats, chunk_batches=20)
        small[label] = {r["batch_size"]: r["wall_speedup_median"] for r in rows if r["model"] == "1 thread"}
    switched = copy.deepcopy(cpcnn)
    for index, head in enumerate(switched.heads):
        switched.heads[index] = ThreadsBySize(head, 64)
    pair = [Contender("cpcnn", cpcnn, 1.0), Contender("cpcnn, heads 1 thread < 64", switched, 1.0)]
    rows = measure(pair, images, BATCHES, repeats=repeats)
    end_to_end = {r["batch_size"]: r["wall_speedup_median"] for r in rows if r["model"] != "cpcnn"}
    return {"small_batches_1_thread_speedup": small, "cpcnn_heads_1_thread_below_64": end_to_end}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-dir", type=Path, default=Path("runs/demo"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--no-onnx", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    splits = load_run(args.demo_dir / "base").data_spec.load()
    images = device_layout(normalize(splits.test.read_images(0, args.images), splits.info), "cpu")
    load = os.getloadavg()[0]
    started = time.perf_counter()
    figures = {
        "threads_default": torch.get_num_threads(),
        "load_average_1min_at_start": load,
        "runtimes": runtimes(args.demo_dir, images, args.repeats, not args.no_onnx),
        "s_share": s_share(args.demo_dir, images, args.repeats),
        "threads": threads(args.demo_dir, images, args.repeats),
    }
    figures["seconds"] = time.perf_counter() - started
    figures["load_average_1min_at_end"] = os.getloadavg()[0]
    print(
        table(
            [
                "model/runtime",
                "batch",
                "images/s",
                "MACs",
                "vs eager base",
                "vs base, same runtime",
                "efficiency, same runtime",
                "vs eager, same model",
            ],
            [
                [
                    r["model"],
                    r["batch_size"],
                    f"{r['images_per_s']:.0f}",
                    f"{r['macs_per_image'] / 1e6:.2f} M",
                    f"{r['wall_speedup_median']:.2f}x",
                    f"{r['vs_base_same_runtime']:.2f}x",
                    f"{r['efficiency_same_runtime']:.2f}",
                    f"{r['vs_eager_same_model']:.2f}x",
                ]
                for r in figures["runtimes"]["rows"]
            ],
        )
    )
    print("compile seconds (batch " + " and ".join(map(str, BATCHES)) + "):", figures["runtimes"]["compile_seconds"])
    for batch, shares in figures["s_share"].items():
        print(f"batch {batch}: share of the CP-CNN's time in " + ", ".join(f"{k} {v:.0%}" for k, v in shares.items()))
    print("1 thread against", figures["threads_default"], "on small sub-batches:", figures["threads"])
    print(f"load average {load:.2f} -> {figures['load_average_1min_at_end']:.2f}; {figures['seconds']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1, default=str))


if __name__ == "__main__":
    main()
