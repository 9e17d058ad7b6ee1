"""DemoConfig: every bad setting is refused naming its option; its CP-CNN settings are a CPCNNConfig; to_dict round-trips."""

from __future__ import annotations

import json
from dataclasses import FrozenInstanceError, replace

import pytest

from dynacnn.cpcnn.config import CPCNNConfig
from dynacnn.errors import ConfigError
from dynacnn.experiments.demo import (
    FULL_CPCNN,
    FULL_EPOCHS,
    QUICK_EPOCHS,
    QUICK_OPTIONS,
    DemoConfig,
    demo_cpcnn_config,
)


@pytest.mark.parametrize(
    "changes, option",
    [
        ({"data": ""}, "--data"),
        ({"data": 3}, "--data"),
        ({"data_dir": 3}, "--data-dir"),
        ({"quick": "yes"}, "--quick"),
        ({"max_drop": -1}, "--max-drop"),
        ({"max_drop": 101}, "--max-drop"),
        ({"max_drop": None}, "--max-drop"),
        ({"epochs": 0}, "--epochs"),
        ({"epochs": 1.5}, "--epochs"),
        ({"epochs": True}, "--epochs"),
        ({"seed": "0"}, "--seed"),
        ({"data_options": [("samples_per_class", 60)]}, "data_options"),
        ({"cpcnn": {"split": "layer1"}}, "cpcnn"),
        ({"cpcnn": CPCNNConfig(split="layer4")}, "layer4"),
        ({"cpcnn": CPCNNConfig(memory_format="nhwc")}, "memory_format"),
        ({"cpcnn": CPCNNConfig(epochs=0)}, "--epochs"),
    ],
)
def test_each_bad_setting_is_refused_naming_the_option(changes, option):
    with pytest.raises(ConfigError, match=option):
        replace(DemoConfig(), **changes).validate()


def test_defaults_follow_the_documented_recipe():
    full, quick = DemoConfig().validate(), DemoConfig(quick=True).validate()
    assert full.cpcnn == FULL_CPCNN and quick.cpcnn == replace(FULL_CPCNN, epochs=2 * QUICK_EPOCHS)
    assert (full.train_epochs, quick.train_epochs, DemoConfig(epochs=3).train_epochs) == (FULL_EPOCHS, QUICK_EPOCHS, 3)
    assert full.data_spec.options == {} and quick.data_spec.options == QUICK_OPTIONS
    assert DemoConfig(quick=True, data_options={"test_limit": 10}).data_spec.options == {
        **QUICK_OPTIONS,
        "test_limit": 10,
    }
    assert quick.recipe.epochs == quick.mscnn.epochs == QUICK_EPOCHS and not quick.recipe.augment
    assert (quick.mscnn.max_drop, quick.mscnn.quick, quick.mscnn.seed, quick.mscnn.distill) == (0.5, True, 0, 0.5)
    with pytest.raises(FrozenInstanceError):
        full.quick = True  # type: ignore[misc]


def test_the_demo_max_drop_and_seed_are_its_cpcnn_settings_too():
    config = DemoConfig(max_drop=2.0, seed=4, cpcnn=demo_cpcnn_config(memory_format="contiguous"))
    assert (config.cpcnn.max_drop, config.cpcnn.seed, config.cpcnn.memory_format) == (2.0, 4, "contiguous")
    moved = replace(config, max_drop=3.0)
    assert moved.cpcnn == replace(config.cpcnn, max_drop=3.0)


@pytest.mark.parametrize(
    "config",
    [
        DemoConfig(),
        DemoConfig(
            data="synthetic",
            data_dir="/data",
            quick=True,
            max_drop=1.5,
            epochs=3,
            seed=2,
            data_options={"samples_per_class": 60},
            cpcnn=demo_cpcnn_config(True, memory_format="channels_last"),
        ),
    ],
)
def test_to_dict_is_json_and_round_trips(config):
    stored = json.loads(json.dumps(config.to_dict()))
    assert stored["cpcnn"] == config.cpcnn.to_dict()
    assert DemoConfig.from_dict(stored) == config
