"""Benchmark (not a test): what the AVX2-safe training layout costs, against training the whole model in NCHW.

`fit` trains in the model's layout (channels_last on the CPU) except the strided 1x1 convolutions with fewer than
16 input channels per group, which oneDNN cannot train in channels_last on AVX2 CPUs (`dynacnn.models.layout`).
The alternative fix is the whole model in NCHW. This times SGD steps of both, interleaved in chunks so that load
on a shared machine hits both alike, for the demo's models and narrower ResNets (where convolutions are guarded).
Run: .venv/bin/python benchmarks/training_layout.py [--steps 5] [--repeats 6] [--batch-size 128]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

from dynacnn.models import build_resnet
from dynacnn.models.layout import safe_backward_layout, unsafe_in_channels_last
from dynacnn.mscnn import MSCNN, default_config


def models() -> dict[str, nn.Module]:
    """The demo's base and MS-CNN (Fashion-MNIST shapes), and narrower ResNets that have guarded convolutions."""
    resnets = {
        f"resnet18 width {width}": build_resnet("resnet18", 10, 1, width, "small-pool")
        for width in (0.0625, 0.1875, 0.25)
    }
    return {**resnets, "MS-CNN (4 stages)": MSCNN(default_config(4, 1, 10))}


def step_timer(model: nn.Module, memory_format: torch.memory_format, batch_size: int):
    """A function running `steps` SGD steps of `model` (in `memory_format`) and returning the seconds they took."""
    model = model.to(memory_format=memory_format).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = torch.randn(batch_size, 1, 28, 28).contiguous(memory_format=memory_format)
    labels = torch.randint(0, 10, (batch_size,))

    def run(steps: int) -> float:
        start = time.perf_counter()
        with safe_backward_layout(model):
            for _ in range(steps):
                outputs = model(images)
                logits = outputs if isinstance(outputs, torch.Tensor) else outputs[-1]
                loss = nn.functional.cross_entropy(logits, labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        return time.perf_counter() - start

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="SGD steps per timed chunk")
    parser.add_argument("--repeats", type=int, default=6, help="chunks per layout, interleaved")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}"
    )
    print("| model | guarded convs | NCHW images/s | channels_last + guard images/s | speed-up of the guarded layout |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, model in models().items():
        guarded = sum(unsafe_in_channels_last(m) for m in model.modules())
        torch.manual_seed(0)
        nchw = step_timer(copy.deepcopy(model), torch.contiguous_format, args.batch_size)
        channels_last = step_timer(copy.deepcopy(model), torch.channels_last, args.batch_size)
        nchw(2), channels_last(2)
        pairs = []
        for repeat in range(args.repeats):  # alternate which layout goes first
            first, second = (nchw, channels_last) if repeat % 2 == 0 else (channels_last, nchw)
            times = {first: first(args.steps), second: second(args.steps)}
            pairs.append((times[nchw], times[channels_last]))
        images = args.steps * args.batch_size
        a = images / statistics.median(p[0] for p in pairs)
        b = images / statistics.median(p[1] for p in pairs)
        ratio = statistics.median(p[0] / p[1] for p in pairs)
        print(f"| {name} | {guarded} | {a:.0f} | {b:.0f} | {ratio:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
