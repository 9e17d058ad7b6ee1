"""Side-by-side wall-clock benchmark: interleaved repetitions in one process, next to counted MAC ratios."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch


@dataclass
class Contender:
    """A model to time: `infer` maps a batch of normalised images to any output; MACs counted elsewhere."""

    name: str
    infer: Callable[[torch.Tensor], Any]
    macs_per_image: float


def _time_pass(infer: Callable[[torch.Tensor], Any], images: torch.Tensor, batch_size: int) -> float:
    if images.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for begin in range(0, len(images), batch_size):
        infer(images[begin : begin + batch_size])
    if images.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


@torch.inference_mode()
def measure(
    contenders: list[Contender],
    images: torch.Tensor,
    batch_sizes: tuple[int, ...] = (1, 32, 256),
    repeats: int = 5,
    max_images_batch1: int = 500,
) -> list[dict[str, float | str | int]]:
    """Images/s of every contender at every batch size; ratios are against the first contender (the base).

    Repetitions are interleaved (base, A, B, base, A, B, ...) so drifts in machine load hit all alike.
    Each speed-up is computed per repetition (base time / contender time) and summarised by its min
    and median. At batch size 1 only the first `max_images_batch1` images are timed.
    """
    rows: list[dict[str, float | str | int]] = []
    base = contenders[0]
    for batch_size in batch_sizes:
        subset = images[:max_images_batch1] if batch_size == 1 else images
        for contender in contenders:
            _time_pass(contender.infer, subset[: batch_size * 2], batch_size)  # warm-up
        times: dict[str, list[float]] = {c.name: [] for c in contenders}
        for _ in range(repeats):
            for contender in contenders:
                times[contender.name].append(_time_pass(contender.infer, subset, batch_size))
        for contender in contenders:
            ratios = [b / c for b, c in zip(times[base.name], times[contender.name])]
            mac_speedup = base.macs_per_image / contender.macs_per_image if contender.macs_per_image else float("inf")
            wall_median = statistics.median(ratios)
            rows.append({
                "model": contender.name,
                "batch_size": batch_size,
                "images": len(subset),
                "images_per_s": len(subset) / statistics.median(times[contender.name]),
                "macs_per_image": contender.macs_per_image,
                "mac_speedup": mac_speedup,
                "wall_speedup_min": min(ratios),
                "wall_speedup_median": wall_median,
                "routing_efficiency": wall_median / mac_speedup,
            })
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    """Markdown table of `measure` rows."""
    lines = [
        "| model | batch | images/s | MACs/image | MAC speed-up | wall speed-up (min / median) | routing efficiency |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['batch_size']} | {row['images_per_s']:.0f} | {row['macs_per_image'] / 1e6:.2f} M | "
            f"{row['mac_speedup']:.2f}x | {row['wall_speedup_min']:.2f}x / {row['wall_speedup_median']:.2f}x | {row['routing_efficiency']:.2f} |"
        )
    return "\n".join(lines) + "\n"
