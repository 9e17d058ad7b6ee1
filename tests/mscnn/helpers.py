"""Tiny MS-CNNs and data shared by the MS-CNN tests."""

from __future__ import annotations

import functools

import torch

from dynacnn.mscnn.model import MSCNN, MSCNNConfig, StageConfig
from dynacnn.mscnn.training import equal_weights, joint_loss

CLASSES = 6
SIZE = 12


def tiny_config(stages: int = 3, classes: int = CLASSES, hidden: tuple[int, ...] = (), pool: int = 1) -> MSCNNConfig:
    """A few-thousand-parameter MS-CNN on 1-channel inputs, bands cycling LL, LH, HL, HH."""
    bands = ("LL", "LH", "HL", "HH")
    return MSCNNConfig(
        tuple(StageConfig(bands[i % 4], (4, 6), (1, 2), 8, hidden) for i in range(stages)), 1, classes, pool
    ).validate()


def tiny_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy copies of one fixed random template per class (the templates do not depend on `seed`)."""
    templates = torch.randn(CLASSES, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(123))
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % CLASSES
    return templates[labels] + 1.2 * torch.randn(n, 1, SIZE, SIZE, generator=generator), labels


@functools.cache
def tiny_model(stages: int = 3, hidden: tuple[int, ...] = (), pool: int = 1, steps: int = 25) -> MSCNN:
    """A tiny MS-CNN briefly trained on `tiny_data` (so its confidences spread over [0, 1]), in eval mode."""
    torch.manual_seed(0)
    model = MSCNN(tiny_config(stages, hidden=hidden, pool=pool))
    x, y = tiny_data(240, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    loss = joint_loss(equal_weights(stages))
    for step in range(steps):
        index = torch.arange(step * 60, step * 60 + 60) % len(y)
        optimizer.zero_grad()
        loss(model(x[index]), y[index]).backward()
        optimizer.step()
    return model.eval()
