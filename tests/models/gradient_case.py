"""One gradient-canary case, run in its own process: a conv trained the way `fit` trains it, against float64.

    python tests/models/gradient_case.py KERNEL STRIDE IN_CHANNELS FORMAT THREADS [--unguarded]

Prints the relative max errors of the weight and input gradients as JSON; exits 1 when either exceeds the
tolerance. `--unguarded` skips `safe_backward_layout`, to reproduce the oneDNN bug it guards against.
"""

from __future__ import annotations

import json
import sys

import torch
from torch import nn

from dynacnn.models.layout import MEMORY_FORMATS, safe_backward_layout

TOLERANCE = 1e-4
OUT_CHANNELS, BATCH, SIZE, STEPS = 8, 32, 32, 3


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return ((value.double() - reference).abs().max() / reference.abs().max()).item()


def main(kernel: int, stride: int, in_channels: int, format_name: str, threads: int, guarded: bool) -> int:
    torch.set_num_threads(threads)
    memory_format = MEMORY_FORMATS[format_name]
    generator = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(in_channels, OUT_CHANNELS, kernel, stride=stride, padding=kernel // 2, bias=False)
    images = torch.randn(BATCH, in_channels, SIZE, SIZE, generator=generator)
    reference = nn.Conv2d(in_channels, OUT_CHANNELS, kernel, stride=stride, padding=kernel // 2, bias=False).double()
    reference.weight.data.copy_(conv.weight.data)
    reference_input = images.double().requires_grad_()
    output = reference(reference_input)
    upstream = torch.randn(output.shape, generator=generator, dtype=torch.float64)
    output.backward(upstream)
    model = nn.Sequential(conv).to(memory_format=memory_format)
    errors = {}
    for _ in range(STEPS):
        inputs = images.clone().contiguous(memory_format=memory_format).requires_grad_()
        conv.weight.grad = None
        if guarded:
            with safe_backward_layout(model):
                model(inputs).backward(upstream.float().contiguous(memory_format=memory_format))
        else:
            model(inputs).backward(upstream.float().contiguous(memory_format=memory_format))
        errors = {
            "weight": relative_error(conv.weight.grad, reference.weight.grad),
            "input": relative_error(inputs.grad, reference_input.grad),
        }
        if max(errors.values()) > TOLERANCE:
            break
    print(json.dumps(errors))
    return 0 if max(errors.values()) <= TOLERANCE else 1


if __name__ == "__main__":
    args = sys.argv[1:]
    sys.exit(main(int(args[0]), int(args[1]), int(args[2]), args[3], int(args[4]), "--unguarded" not in args))
