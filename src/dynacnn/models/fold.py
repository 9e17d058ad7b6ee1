"""Inference form of a model: every BatchNorm that directly follows a convolution folded into its weights.

Folding is what deployment runtimes (TensorRT, ONNX Runtime, OpenVINO) do before they run a network, so
every model the project times goes through it alike: the base, the routed CP-CNN, the MS-CNN and the
baselines. A folded BatchNorm becomes `nn.Identity`, so code that reads a block's layers by position
still finds them (the conv then carries the bias). Modules with data-dependent control flow (the routed
CP-CNN, an early-exit loop) cannot be traced as a whole; their children are folded one by one. Tracing
runs no real computation and changes nothing, so a failed trace leaves the module as it was.
"""

from __future__ import annotations

import copy
from collections import Counter

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of `model` whose conv -> BatchNorm pairs are single convs; outputs agree to float tolerance."""
    folded = copy.deepcopy(model).eval()
    _fold_in_place(folded)
    return folded


def _fold_in_place(module: nn.Module) -> None:
    try:
        graph = fx.symbolic_trace(module).graph
    except Exception:  # noqa: BLE001 - whatever stops the tracer (control flow, input checks): fold the children
        for child in module.children():
            _fold_in_place(child)
        return
    modules = dict(module.named_modules())
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    for node in graph.nodes:
        source = node.args[0] if node.op == "call_module" and node.args else None
        if not (isinstance(source, fx.Node) and source.op == "call_module" and len(source.users) == 1):
            continue
        conv, norm = modules[source.target], modules[node.target]
        foldable = isinstance(conv, CONVOLUTIONS) and isinstance(norm, BATCH_NORMS) and norm.track_running_stats
        if foldable and calls[source.target] == 1 and calls[node.target] == 1:
            fused = fuse_conv_bn_eval(conv, norm)
            if conv.weight.is_contiguous(memory_format=torch.channels_last) and fused.weight.dim() == 4:
                fused.weight.data = fused.weight.data.contiguous(memory_format=torch.channels_last)
            module.set_submodule(source.target, fused)
            module.set_submodule(node.target, nn.Identity())
