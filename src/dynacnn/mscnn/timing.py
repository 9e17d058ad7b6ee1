"""Wall-clock throughput measured side by side: interleaved repetitions, median time per run."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch


@torch.no_grad()
def images_per_second(runs: dict[str, Callable[[torch.Tensor], Any]], batches: list[torch.Tensor], repeats: int = 3) -> dict[str, float]:
    """Images/s of every run over `batches`; each repetition times every run in turn after one warm-up pass."""
    images = sum(len(b) for b in batches)
    for run in runs.values():
        run(batches[0])
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(max(1, repeats)):
        for name, run in runs.items():
            start = time.perf_counter()
            for x in batches:
                run(x)
            seconds[name].append(time.perf_counter() - start)
    return {name: images / statistics.median(times) for name, times in seconds.items()}
