"""Fixed-point conversion (§IV-C): fraction bits, error against bit-length, saturation, bits analyses."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dynacnn.errors import ConfigError
from dynacnn.mscnn.bits import bit_sweep, bit_table, dynamic_fc_precision
from dynacnn.mscnn.cache import collect
from dynacnn.mscnn.fixed_point import fraction_bits, quantize_module, saturation_bits, to_fixed_point
from dynacnn.train import TensorBatches

from .helpers import tiny_data, tiny_model


def test_fraction_bits_from_the_weight_range() -> None:
    assert fraction_bits(torch.tensor([0.3, -0.1]), 8) == 8
    assert fraction_bits(torch.tensor([0.8]), 8) == 7
    assert fraction_bits(torch.tensor([-1.0, 0.2]), 8) == 6
    assert fraction_bits(torch.tensor([5.0]), 8) == 4


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**16), st.floats(0.01, 100.0))
def test_error_shrinks_as_bits_grow(seed: int, scale: float) -> None:
    weight = torch.randn(200, generator=torch.Generator().manual_seed(seed)) * scale
    errors = [(to_fixed_point(weight, bits) - weight).abs().max().item() for bits in range(2, 17)]
    assert all(later <= earlier for earlier, later in zip(errors, errors[1:]))
    assert errors[-1] <= weight.abs().max().item() * 2.0**-14
    assert errors[0] > errors[-1]


def test_values_are_on_the_fixed_point_grid() -> None:
    weight = torch.randn(100)
    bits = 6
    step = 2.0 ** -fraction_bits(weight, bits)
    levels = to_fixed_point(weight, bits) / step
    assert torch.equal(levels, levels.round()) and levels.abs().max() <= 2 ** (bits - 1)


@pytest.mark.parametrize("bits", [1, 0, -3])
def test_bits_below_two_are_refused(bits: int) -> None:
    with pytest.raises(ConfigError, match="bit-length"):
        to_fixed_point(torch.randn(3), bits)
    with pytest.raises(ConfigError, match="bit-length"):
        quantize_module(torch.nn.Linear(2, 2), bits)


def test_saturation_bits() -> None:
    curve = {4: 0.5, 6: 0.89, 8: 0.90, 10: 0.88, 12: 0.90}
    assert saturation_bits(curve, 0.90, 0.005) == 12
    assert saturation_bits(curve, 0.90, 0.02) == 6
    assert saturation_bits({4: 0.1, 8: 0.2}, 0.9, 0.01) == 8


def test_bit_analyses_on_a_tiny_model() -> None:
    model = tiny_model(stages=3, pool=2)
    x, y = tiny_data(60, seed=4)
    sweep = bit_sweep(model, x, y, (2, 8, 16))
    assert [curve[16] for curve in sweep["top1"]] == pytest.approx(sweep["float_top1"], abs=0.02)
    rows = bit_table(model, sweep)
    assert all(row["size_mb_bits"] < row["size_mb_32"] for row in rows)
    outputs = collect(model, TensorBatches(x, y, 60))
    exact = dynamic_fc_precision(model, outputs, [16] * 3, keep=6, low_bits=2)
    assert exact["top1"] == pytest.approx(outputs.stage_top1()[-1], abs=0.02)
    cheap = dynamic_fc_precision(model, outputs, [16] * 3, keep=1, low_bits=4)
    assert cheap["fc_kb_per_image"] < cheap["static_fc_kb_per_image"]
