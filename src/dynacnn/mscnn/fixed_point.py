"""Variable and dynamic bit-length fixed point (§IV-C, Fig. 4, Table III), post-training, no re-training.

Scheme: symmetric signed fixed point per tensor. A `bits`-bit tensor has one sign bit, I integer bits
with I = floor(log2(max |w|)) + 1 (just enough for its largest magnitude; negative I for tensors
whose values are all below 1/2) and F = bits - 1 - I fraction bits: values are round(w * 2^F) / 2^F,
clamped to [-2^(bits-1), 2^(bits-1) - 1] / 2^F, via `torch.fake_quantize_per_tensor_affine`. The
weights and biases of every conv and linear layer of a stage are converted, each tensor with its
own fraction bits; BatchNorm stays in float (hardware folds it into the conv's scale and offset).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from dynacnn.errors import ConfigError

MIN_BITS = 2


def check_bits(bits: int) -> int:
    """Bit-lengths below 2 leave no magnitude bit."""
    if not isinstance(bits, int) or bits < MIN_BITS:
        raise ConfigError(f"bit-length {bits!r} must be an integer >= {MIN_BITS} (one sign bit plus at least one more)")
    return bits


def fraction_bits(tensor: torch.Tensor, bits: int) -> int:
    """§IV-C: fraction bits F = bits - 1 - (floor(log2(max|w|)) + 1) for a symmetric signed tensor."""
    check_bits(bits)
    peak = float(tensor.detach().abs().max()) if tensor.numel() else 0.0
    integer = math.floor(math.log2(peak)) + 1 if peak > 0 else 0
    return bits - 1 - integer


def to_fixed_point(tensor: torch.Tensor, bits: int) -> torch.Tensor:
    """`tensor` rounded to `bits`-bit symmetric fixed point with its own fraction bits (returned as float)."""
    scale = 2.0 ** -fraction_bits(tensor, bits)
    return torch.fake_quantize_per_tensor_affine(
        tensor.detach().float(), scale, 0, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    )


def quantize_in_place(module: nn.Module, bits: int) -> nn.Module:
    """Convert the conv and linear weights and biases of `module` itself to `bits`-bit fixed point; returns it."""
    check_bits(bits)
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            for name in ("weight", "bias"):
                param = getattr(layer, name)
                if param is not None:
                    param.data = to_fixed_point(param.data, bits).to(param.dtype)
    return module


def quantize_module(module: nn.Module, bits: int) -> nn.Module:
    """A copy of `module` whose conv and linear weights and biases are `bits`-bit fixed point."""
    check_bits(bits)
    return quantize_in_place(copy.deepcopy(module), bits)


def size_mb(params: int, bits: int) -> float:
    """Parameter size in MB (10^6 bytes) at `bits` bits per parameter."""
    return params * bits / 8 / 1e6


def saturation_bits(accuracy: dict[int, float], reference: float, tolerance: float) -> int:
    """Fig. 4: the smallest swept bit-length whose accuracy is within `tolerance` of `reference` (float)
    and stays so for every longer swept bit-length; the longest swept one if none is."""
    swept = sorted(accuracy)
    for index, bits in enumerate(swept):
        if all(accuracy[b] >= reference - tolerance for b in swept[index:]):
            return bits
    return swept[-1]
