"""Bit-length analyses (§IV-C): per-stage sweep (Fig. 4), saturation bit-lengths and sizes (Table III), dynamic FC rows."""

from __future__ import annotations

import torch

from dynacnn.flops import count_params
from dynacnn.mscnn.cache import StageOutputs
from dynacnn.mscnn.explore import topk_correct
from dynacnn.mscnn.fixed_point import check_bits, quantize_module, saturation_bits, size_mb, to_fixed_point
from dynacnn.mscnn.model import MSCNN


@torch.no_grad()
def bit_sweep(
    model: MSCNN, x: torch.Tensor, labels: torch.Tensor, bit_lengths: tuple[int, ...] = tuple(range(4, 17))
) -> dict:
    """Fig. 4: each stage's top-1 and top-5 with only that stage's parameters (conv stack and classifier) in fixed
    point."""
    for bits in bit_lengths:
        check_bits(bits)
    model.eval()
    labels = labels.to(x.device)
    bands = model.dwt(x)
    pooled = [model.features(bands, s) for s in range(model.num_stages)]
    reference, reference5, curves, curves5 = [], [], [], []

    def top5(logits: torch.Tensor) -> float:
        return topk_correct(logits.softmax(1), labels).float().mean().item()

    for stage in range(model.num_stages):
        logits = model.heads[stage](torch.cat(pooled[: stage + 1], 1))
        reference.append((logits.argmax(1) == labels).float().mean().item())
        reference5.append(top5(logits))
        band = bands[:, model.band_index[stage]]
        curve, curve5 = {}, {}
        for bits in bit_lengths:
            body, head = quantize_module(model.bodies[stage], bits), quantize_module(model.heads[stage], bits)
            features = model.pool(body(band)).flatten(1)
            logits = head(torch.cat([*pooled[:stage], features], 1))
            curve[bits] = (logits.argmax(1) == labels).float().mean().item()
            curve5[bits] = top5(logits)
        curves.append(curve)
        curves5.append(curve5)
    return {"float_top1": reference, "top1": curves, "float_top5": reference5, "top5": curves5}


def bit_table(model: MSCNN, sweep: dict, tolerance: float = 0.002) -> list[dict]:
    """Table III analog: per stage, saturation bit-length, the stage's top-1 / top-5 there and in float (its own
    classifier, only its parameters converted), and parameter size (MB) at 32 bits and at that length."""
    rows = []
    for stage, (curve, reference) in enumerate(zip(sweep["top1"], sweep["float_top1"])):
        bits = saturation_bits(curve, reference, tolerance)
        params = count_params(model.bodies[stage]) + count_params(model.heads[stage])
        rows.append(
            {
                "stage": stage + 1,
                "saturation_bits": bits,
                "float_top1": reference,
                "float_top5": sweep["float_top5"][stage],
                "top1": curve[bits],
                "top5": sweep["top5"][stage][bits],
                "params": params,
                "size_mb_32": size_mb(params, 32),
                "size_mb_bits": size_mb(params, bits),
            }
        )
    return rows


@torch.no_grad()
def dynamic_fc_precision(model: MSCNN, outputs: StageOutputs, stage_bits: list[int], keep: int, low_bits: int) -> dict:
    """§IV-C dynamic variant: after stage i, the last-FC rows of stage i+1 for classes outside stage i's
    top-`keep` use `low_bits` (at most the stage's own bit-length); the kept rows use the stage's bit-length.
    Conv stacks and hidden FC layers stay in float, so the effect of the FC rows' precision is isolated."""
    check_bits(low_bits)
    probs, bits_read, static_read = None, 0.0, 0.0
    classes = model.config.num_classes
    device = next(model.parameters()).device
    for stage, head in enumerate(model.heads):
        hidden = head.hidden(torch.cat(outputs.features[: stage + 1], 1).to(device))
        high = hidden @ to_fixed_point(head.fc.weight, stage_bits[stage]).T + to_fixed_point(
            head.fc.bias, stage_bits[stage]
        )
        row = head.fc.in_features + 1
        static_read += classes * row * stage_bits[stage]
        if probs is None:
            logits = high
            bits_read += classes * row * stage_bits[stage]
        else:
            low_bits_here = min(low_bits, stage_bits[stage])
            low = hidden @ to_fixed_point(head.fc.weight, low_bits_here).T + to_fixed_point(head.fc.bias, low_bits_here)
            top = torch.zeros_like(probs, dtype=torch.bool).scatter_(1, probs.topk(keep, dim=1).indices, True)
            logits = torch.where(top, high, low)
            bits_read += row * (keep * stage_bits[stage] + (classes - keep) * low_bits_here)
        probs = logits.softmax(1)
    return {
        "keep": keep,
        "low_bits": low_bits,
        "top1": (probs.argmax(1).cpu() == outputs.labels).float().mean().item(),
        "top5": topk_correct(probs.cpu(), outputs.labels).float().mean().item(),
        "fc_kb_per_image": bits_read / 8 / 1e3,
        "static_fc_kb_per_image": static_read / 8 / 1e3,
    }
