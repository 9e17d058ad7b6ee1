"""Fixtures shared by the MS-CNN tests."""

from __future__ import annotations

import pytest
import torch

from .helpers import tiny_data


@pytest.fixture(scope="package", autouse=True)
def single_thread():
    """Tiny tensors run fastest, and disturb others least, on one thread (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def images() -> torch.Tensor:
    return tiny_data(60, seed=1)[0]
