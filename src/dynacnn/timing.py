"""Paired wall-clock timing against a base: interleaved chunks in one process, next to counted MAC ratios."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm


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
    chunk_batches: int = 10,
    references: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Images/s of every contender at every batch size; ratios are against the first contender (the base), or
    against `references[name]` where given (e.g. an exported model against the exported base).

    Each repetition walks the images in chunks of `chunk_batches` batches; every contender runs each chunk
    right after the others (the order rotates from chunk to chunk), so a burst of load on a shared machine
    hits one chunk of every contender, not one contender's whole pass. Each speed-up is computed per chunk
    (base time / contender time on the same images, moments apart) and summarised by its min and median;
    images/s is the images over the median repetition's total time. At batch size 1 only the first
    `max_images_batch1` images are timed. Timings are of the steady state: every contender first makes one
    untimed pass over all the images, so a routed model whose sub-batches take many shapes has met them all
    (oneDNN builds a kernel per new shape; on the MS-CNN the cold first pass was about 20% slower). Each row keeps
    its per-chunk seconds (`chunk_seconds`), so `paired_speedup` can pair any two rows afterwards.
    """
    rows: list[dict[str, Any]] = []
    by_name = {c.name: c for c in contenders}
    reference_of = {c.name: (references or {}).get(c.name, contenders[0].name) for c in contenders}
    unknown = sorted(set(reference_of.values()) - set(by_name))
    if unknown:
        raise ValueError(f"references name contenders that are not timed: {unknown}")
    bar = tqdm(total=len(batch_sizes) * (repeats + 1), desc="timing", unit="pass", leave=False, disable=None)
    for batch_size in batch_sizes:
        subset = images[:max_images_batch1] if batch_size == 1 else images
        chunk = batch_size * chunk_batches
        chunks = [subset[begin : begin + chunk] for begin in range(0, len(subset), chunk)]
        bar.set_postfix(batch=batch_size)
        for contender in contenders:
            _time_pass(contender.infer, subset, batch_size)
        bar.update()
        times: dict[str, list[list[float]]] = {c.name: [] for c in contenders}
        for repeat in range(repeats):
            for contender in contenders:
                times[contender.name].append([])
            for index, part in enumerate(chunks):
                shift = (repeat * len(chunks) + index) % len(contenders)
                for contender in contenders[shift:] + contenders[:shift]:
                    times[contender.name][-1].append(_time_pass(contender.infer, part, batch_size))
            bar.update()
        for contender in contenders:
            base = by_name[reference_of[contender.name]]
            ratio = speedup_summary(
                times[base.name], base.macs_per_image, times[contender.name], contender.macs_per_image
            )
            rows.append(
                {
                    "model": contender.name,
                    "reference": base.name,
                    "batch_size": batch_size,
                    "images": len(subset),
                    "images_per_s": len(subset) / statistics.median(sum(pass_) for pass_ in times[contender.name]),
                    "macs_per_image": contender.macs_per_image,
                    "mac_speedup": ratio["mac_speedup"],
                    "wall_speedup_min": ratio["min"],
                    "wall_speedup_median": ratio["median"],
                    "paired_timings": ratio["pairs"],
                    "routing_efficiency": ratio["routing_efficiency"],
                    "chunk_seconds": times[contender.name],
                }
            )
    bar.close()
    return rows


def chunk_ratios(reference: Sequence[Sequence[float]], contender: Sequence[Sequence[float]]) -> list[float]:
    """Per-chunk speed-ups: reference seconds / contender seconds on the same chunk of the same repetition."""
    return [b / c for ref_pass, pass_ in zip(reference, contender) for b, c in zip(ref_pass, pass_)]


def speedup_summary(
    reference_seconds: Sequence[Sequence[float]],
    reference_macs: float,
    seconds: Sequence[Sequence[float]],
    macs: float,
) -> dict[str, float]:
    """Median and min per-chunk speed-up over the reference, the number of pairs, the MAC speed-up and the routing
    efficiency (wall median / MAC speed-up)."""
    ratios = chunk_ratios(reference_seconds, seconds)
    mac = reference_macs / macs if macs else float("inf")
    median = statistics.median(ratios)
    return {
        "median": median,
        "min": min(ratios),
        "pairs": len(ratios),
        "mac_speedup": mac,
        "routing_efficiency": median / mac,
    }


def paired_speedup(row: Mapping[str, Any], reference: Mapping[str, Any]) -> dict[str, float]:
    """`speedup_summary` of timing row `row` over `reference` (two rows of one `measure` call, same batch size)."""
    if row["batch_size"] != reference["batch_size"]:
        raise ValueError(f"rows of batch sizes {row['batch_size']} and {reference['batch_size']} are not paired")
    return speedup_summary(
        reference["chunk_seconds"], reference["macs_per_image"], row["chunk_seconds"], row["macs_per_image"]
    )
