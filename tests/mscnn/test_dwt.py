"""The Haar DWT is pywt's and its inverse reconstructs the input."""

from __future__ import annotations

import numpy as np
import pytest
import pywt
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dynacnn.mscnn.dwt import HaarDWT, InverseHaarDWT


@pytest.mark.parametrize("shape", [(2, 1, 8, 8), (1, 3, 28, 28), (2, 2, 7, 9)])
def test_matches_pywt(shape: tuple[int, ...]) -> None:
    x = torch.randn(*shape, dtype=torch.float64)
    bands = HaarDWT().double()(x)
    low, (horizontal, vertical, diagonal) = pywt.dwt2(x.numpy(), "haar")
    np.testing.assert_allclose(bands.numpy(), np.stack([low, horizontal, vertical, diagonal], 1), atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 3), st.integers(1, 2), st.integers(1, 11), st.integers(1, 11), st.integers(0, 2**16))
def test_inverse_reconstructs(batch: int, channels: int, height: int, width: int, seed: int) -> None:
    x = torch.randn(batch, channels, height, width, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    bands = HaarDWT().double()(x)
    assert bands.shape == (batch, 4, channels, (height + 1) // 2, (width + 1) // 2)
    torch.testing.assert_close(InverseHaarDWT().double()(bands, height, width), x)


def test_energy_is_preserved() -> None:
    x = torch.randn(3, 1, 10, 10, dtype=torch.float64)
    assert torch.isclose(HaarDWT().double()(x).square().sum(), x.square().sum())
