"""Memory layouts: channels_last for speed on the CPU, and the one geometry that must not train in it.

oneDNN's 1x1 convolution kernel (torch 2.14.1 ships oneDNN 3.12) computes the weight gradient of a strided 1x1
convolution in NHWC layout with fewer input channels than its channel block through a "reduce to unit stride"
workspace that it overruns (upstream oneDNN issue 6035, open): on AVX2-only CPUs the weight gradient is silently
wrong, the process hangs, or the heap is corrupted. `safe_backward_layout` routes exactly those convolutions
through the plain NCHW layout while a model trains, and leaves every other layer in the layout it was given, so
the speed of channels_last training is kept where it is safe. Inference is not affected.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch
from torch import nn

MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
"""The layouts the project runs in, by the names the CLI and run files use."""

_Layoutable = TypeVar("_Layoutable", nn.Module, torch.Tensor)

SAFE_BLOCK_CHANNELS = 16
"""oneDNN's input-channel block: 8 on AVX2, 16 on AVX-512; fewer input channels per group than this is unsafe."""


def device_format(device: torch.device | str) -> torch.memory_format:
    """The layout models and images run in on `device`: channels_last on the CPU (oneDNN runs these small
    convolutions about 20% faster there), contiguous elsewhere."""
    return torch.channels_last if torch.device(device).type == "cpu" else torch.contiguous_format


def device_layout(x: _Layoutable, device: torch.device | str) -> _Layoutable:
    """A module (in place, as `Module.to` does) or a 4-D tensor in `device_format(device)`; unchanged off the CPU."""
    if torch.device(device).type != "cpu":
        return x
    if isinstance(x, nn.Module):
        return x.to(memory_format=torch.channels_last)
    return as_format(x, torch.channels_last)


def memory_format_of(module: nn.Module) -> torch.memory_format:
    """channels_last if the module's spatial convolution weights are stored that way, else contiguous."""
    for param in module.parameters():
        if param.dim() == 4 and param.shape[-1] > 1:
            channels_last = param.is_contiguous(memory_format=torch.channels_last) and not param.is_contiguous()
            return torch.channels_last if channels_last else torch.contiguous_format
    return torch.contiguous_format


def as_format(x: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """A 4-D tensor in `memory_format` (no copy if it already is); other tensors unchanged."""
    return x.contiguous(memory_format=memory_format) if x.dim() == 4 else x


def unsafe_in_channels_last(conv: nn.Module) -> bool:
    """Whether `conv` is a strided 1x1 convolution with fewer input channels per group than oneDNN's channel block."""
    return (
        isinstance(conv, nn.Conv2d)
        and conv.kernel_size == (1, 1)
        and max(conv.stride) > 1
        and conv.in_channels // conv.groups < SAFE_BLOCK_CHANNELS
    )


def _contiguous_input(module: nn.Module, args: tuple) -> tuple:
    return tuple(arg.contiguous() if isinstance(arg, torch.Tensor) else arg for arg in args)


@contextmanager
def safe_backward_layout(model: nn.Module) -> Iterator[list[nn.Conv2d]]:
    """Within the block, `model`'s CPU convolutions that are unsafe in channels_last run forward and backward in NCHW.

    Their weights and inputs are made NCHW (oneDNN picks NHWC, forward and backward, if either is); every other
    layer keeps its layout, and on exit the weights get their own strides back. GPU convolutions are left alone
    (cuDNN has no such kernel). Yields the guarded convolutions.
    """
    guarded = [m for m in model.modules() if unsafe_in_channels_last(m) and m.weight.device.type == "cpu"]
    originals = [conv.weight.data for conv in guarded]
    hooks = []
    try:
        for conv in guarded:
            conv.weight.data = conv.weight.data.clone(memory_format=torch.contiguous_format)
            hooks.append(conv.register_forward_pre_hook(_contiguous_input))
        yield guarded
    finally:
        for hook in hooks:
            hook.remove()
        for conv, original in zip(guarded, originals):
            conv.weight.data = original.copy_(conv.weight.data)
