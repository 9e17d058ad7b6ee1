"""Batch halves on two cores: each half of a batch on its own Python thread with one intra-op thread, against the
whole batch on one thread with two intra-op threads, for every model of a demo directory (issue 19's thread lever).

Routed models run many small ops on shrinking sub-batches, which two intra-op threads split poorly; two halves
side by side keep both cores busy. Every model gets the same treatment, so the ratios to the base are comparable.

    python benchmarks/batch_split.py --demo-dir runs/demo
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from dynacnn.data import load_dataset
from dynacnn.data.batching import normalize
from dynacnn.experiments.bench import demo_contenders
from dynacnn.models.layout import device_layout


def whole(model: Callable[[torch.Tensor], Any], chunks: list[torch.Tensor], pool: ThreadPoolExecutor) -> float:
    """Seconds for every chunk through `model` on two intra-op threads."""
    torch.set_num_threads(2)
    start = time.perf_counter()
    for chunk in chunks:
        model(chunk)
    return time.perf_counter() - start


def halves(model: Callable[[torch.Tensor], Any], chunks: list[torch.Tensor], pool: ThreadPoolExecutor) -> float:
    """Seconds for every chunk split in two halves, run side by side on two threads of one intra-op thread each."""
    torch.set_num_threads(1)
    start = time.perf_counter()
    for chunk in chunks:
        list(pool.map(model, chunk.chunk(2)))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-dir", default="runs/demo")
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved; the first is a warm-up")
    args = parser.parse_args()
    data, cpu = load_dataset("fashion-mnist"), torch.device("cpu")
    contenders = demo_contenders(Path(args.demo_dir), data.info.input_shape, cpu)  # as `dynacnn bench` runs them
    models = {contender.name: contender.infer for contender in contenders}
    images = device_layout(normalize(data.test.read_images(0, args.images), data.info), cpu)
    modes = {"whole batch, 2 threads": whole, "two halves, 1 thread each": halves}
    with torch.inference_mode(), ThreadPoolExecutor(2) as pool:
        for batch in (32, 256):
            chunks = list(images.split(batch))
            times: dict[tuple[str, str], list[float]] = {(n, m): [] for n in models for m in modes}
            for _ in range(args.repeats):
                for name, model in models.items():
                    for mode, run in modes.items():
                        times[(name, mode)].append(run(model, chunks, pool))
            median = {key: statistics.median(values[1:]) for key, values in times.items()}
            for mode in modes:
                cells = [
                    f"{name} {len(images) / median[(name, mode)]:.0f}/s ({median[('base', mode)] / median[(name, mode)]:.2f}x)"
                    for name in models
                ]
                print(f"batch {batch}, {mode}: " + ", ".join(cells))
            gains = [
                f"{name} {median[(name, 'whole batch, 2 threads')] / median[(name, 'two halves, 1 thread each')]:.2f}x"
                for name in models
            ]
            print(f"batch {batch}, halves over whole, same model: " + ", ".join(gains))


if __name__ == "__main__":
    main()
