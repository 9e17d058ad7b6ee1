"""MSCNNRunConfig: every bad setting is refused naming its option; to_dict is JSON and round-trips."""

from __future__ import annotations

import json
from dataclasses import FrozenInstanceError, replace

import pytest

from dynacnn.errors import ConfigError
from dynacnn.mscnn.config import MSCNNRunConfig
from dynacnn.mscnn.model import MSCNNConfig, StageConfig, default_config


@pytest.mark.parametrize(
    "changes, option",
    [
        ({"max_drop": -1}, "--max-drop"),
        ({"max_drop": 101}, "--max-drop"),
        ({"max_drop": "0.5"}, "--max-drop"),
        ({"max_drop": True}, "--max-drop"),
        ({"fc_rows": "rows"}, "--fc-rows"),
        ({"epochs": 0}, "--epochs"),
        ({"epochs": 2.5}, "--epochs"),
        ({"augment": "yes"}, "--augment"),
        ({"quick": 1}, "quick"),
        ({"seed": 0.5}, "--seed"),
        ({"batch_size": 0}, "batch_size"),
        ({"lr": 0}, "lr"),
        ({"lr": "fast"}, "lr"),
        ({"mode": "greedy"}, "mode"),
        ({"drop_z": -1.0}, "drop_z"),
        ({"stages": 1}, "--stages"),
        ({"stages": True}, "--stages"),
        ({"rank_images": 0}, "rank_images"),
        ({"rank_images": 2.5}, "rank_images"),
        ({"model": {"stages": []}}, "model"),
        ({"model": MSCNNConfig((StageConfig(),), 1, 10)}, "model: an MS-CNN needs at least 2 stages"),
    ],
)
def test_each_bad_setting_is_refused_naming_the_option(changes, option):
    with pytest.raises(ConfigError, match=option):
        replace(MSCNNRunConfig(), **changes).validate()


def test_defaults_are_valid_and_frozen():
    config = MSCNNRunConfig().validate()
    assert (config.epochs, config.max_drop, config.fc_rows, config.augment, config.mode) == (
        8,
        0.5,
        "batch",
        False,
        "joint",
    )
    with pytest.raises(FrozenInstanceError):
        config.epochs = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    "config",
    [
        MSCNNRunConfig(),
        MSCNNRunConfig(
            epochs=2,
            max_drop=1,
            fc_rows="image",
            augment=True,
            quick=True,
            seed=3,
            batch_size=16,
            lr=0.05,
            mode="stagewise",
            drop_z=0.0,
            stages=3,
        ),
        MSCNNRunConfig(model=default_config(3, 1, 6)),
    ],
)
def test_to_dict_is_json_and_round_trips(config):
    stored = json.loads(json.dumps(config.to_dict()))
    assert MSCNNRunConfig.from_dict(stored) == config
    assert MSCNNRunConfig.from_dict(config.to_dict()) == config
