"""Shapes and helpers shared by the export tests."""

from __future__ import annotations

import torch

CP_SHAPE = (3, 16, 16)
MEMBERS = [[0, 3, 5], [1], [2, 4], [6, 7, 8]]
MS_SHAPE = (1, 12, 12)
MS_CLASSES, MS_STAGES = 6, 3


def spread_batchnorm(model: torch.nn.Module) -> None:
    """Non-trivial BatchNorm statistics, so that folding and gathers would show up in the outputs."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)


CP_HEADS = ("L0", "trivial", "LC", "L1")
CHOSEN = {
    "policy": "PTHP",
    "settings": {"d_ct": [0.9, 0.9], "top_c": 2, "s_th": [0.8, 0.9], "stop_size": 2},
    "fc_rows": "batch",
}


def synthetic(classes: int, channels: int, size: int) -> dict:
    """A tiny synthetic data spec matching a model's input (its mean/std end up in routing.json)."""
    options = {"num_classes": classes, "channels": channels, "image_size": size, "samples_per_class": 6}
    return {"name": "synthetic", "options": options | {"test_samples_per_class": 2}}
