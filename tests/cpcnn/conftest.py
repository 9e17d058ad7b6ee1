"""Fixtures shared by the CP-CNN tests: a tiny synthetic dataset and a ResNet-18 trained on it as a run."""

from __future__ import annotations

import pytest
import torch

from dynacnn.runs import DataSpec, ModelSpec, save_run
from dynacnn.train import ImageBatches, TrainConfig, fit


@pytest.fixture(scope="session")
def synthetic_spec() -> DataSpec:
    """6 classes in 3 groups, 12x12 grey images, 24 training and 8 test images per class."""
    options = {
        "num_classes": 6,
        "num_groups": 3,
        "image_size": 12,
        "channels": 1,
        "samples_per_class": 24,
        "test_samples_per_class": 8,
    }
    return DataSpec("synthetic", None, 0.25, 0, options)


@pytest.fixture(scope="module")
def base_run(synthetic_spec, tmp_path_factory):
    """A tiny ResNet-18 trained for one epoch on the synthetic data, saved as a `dynacnn train` run:
    (run directory, splits, model)."""
    run_dir = tmp_path_factory.mktemp("base")
    data = synthetic_spec.load()
    spec = ModelSpec("resnet18", 0.125, "small", 6, 1)
    torch.manual_seed(0)
    model = spec.build()
    config = TrainConfig(epochs=1, batch_size=32, lr=0.05, schedule="cosine")
    fit(model, ImageBatches(data.train, data.info, 32, shuffle=True), config, run_dir=run_dir)
    save_run(run_dir, model, spec, synthetic_spec)
    return run_dir, data, model
