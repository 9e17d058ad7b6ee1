"""Model shapes, configuration checks, Table II widths and the cost model."""

from __future__ import annotations

import pytest
import torch

from dynacnn.errors import ConfigError
from dynacnn.flops import count_macs, count_params
from dynacnn.mscnn.costs import measure_costs
from dynacnn.mscnn.model import MSCNN, MSCNNConfig, StageConfig, default_config, table2_config

from .helpers import tiny_config, tiny_model

TABLE2_PARAMS_M = (3.36, 4.54, 5.72, 6.90, 18.15, 20.5, 54.01)


def test_forward_returns_every_stage() -> None:
    model = MSCNN(tiny_config(stages=5, hidden=(7,), pool=2))
    logits = model(torch.randn(3, 1, 12, 12))
    assert [tuple(stage_logits.shape) for stage_logits in logits] == [(3, 6)] * 5
    assert [b for b in model.band_index] == [0, 1, 2, 3, 0]


def test_default_config_suits_28px() -> None:
    model = MSCNN(default_config())
    assert len(model(torch.randn(2, 1, 28, 28))) == 4
    assert [s.band for s in model.config.stages] == ["LL", "LH", "HL", "HH"]


def test_table2_widths_give_table2_parameter_counts() -> None:
    with torch.device("meta"):
        model = MSCNN(table2_config())
    for body, head, expected in zip(model.bodies, model.heads, TABLE2_PARAMS_M):
        assert (count_params(body) + count_params(head)) / 1e6 == pytest.approx(expected, rel=0.02)


def test_cost_model_adds_up_to_counted_macs() -> None:
    model = tiny_model(stages=3, hidden=(5,), pool=2)
    costs = measure_costs(model, (1, 12, 12))
    assert costs.full_macs == count_macs(model, torch.randn(1, 1, 12, 12)).macs
    assert sum(s.params for s in costs.stages) == count_params(model)


def test_config_round_trips_through_json_dict() -> None:
    config = tiny_config(hidden=(3, 2), pool=2)
    assert MSCNNConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    "stage", [StageConfig(band="XX"), StageConfig(widths=(4,), strides=(1, 2)), StageConfig(last=0)]
)
def test_bad_stage_config(stage: StageConfig) -> None:
    with pytest.raises(ConfigError):
        MSCNNConfig((stage, stage)).validate()


def test_one_stage_is_refused() -> None:
    with pytest.raises(ConfigError, match="at least 2 stages"):
        MSCNNConfig((StageConfig(),)).validate()
