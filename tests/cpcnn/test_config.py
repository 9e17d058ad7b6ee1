"""CPCNNConfig: every bad value is refused naming its option; to_dict() round-trips; the checks that need the data."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from dynacnn.cpcnn.config import QUICK_TRAIN_IMAGES, CPCNNConfig, parse_configs
from dynacnn.errors import ConfigError

BAD = [
    ("tau", 0), ("tau", 1.5), ("tau", "0.9"), ("tau", True),
    ("max_drop", -1), ("max_drop", 100.5), ("max_drop", True), ("max_drop", "0.5"), ("max_drop", math.nan),
    ("split", "layer4"), ("split", "fc"), ("split", "layer9"),
    ("configs", "L1,C0:L2"), ("configs", ""), ("configs", "L1,L9"), ("configs", "C0:L99"), ("configs", ["L1"]),
    ("n_clusters", 1), ("n_clusters", 2.5), ("n_clusters", True), ("n_clusters", 11),
    ("epochs", 0), ("epochs", 1.5), ("epochs", True),
    ("quick", 1), ("quick", "yes"),
    ("seed", 1.5), ("seed", "0"), ("seed", None),
    ("rule", "majority"), ("weighting", "uniform"),
    ("feature_copies", 0), ("feature_copies", True), ("feature_copies", 1.0),
    ("lr", 0), ("lr", -0.1), ("lr", math.nan), ("lr", math.inf), ("lr", "0.1"),
    ("distill", -0.1), ("distill", 1.5), ("head_distill", 2), ("head_distill", None),
    ("head_tolerance", -1), ("head_tolerance", 100.5), ("head_tolerance", True),
    ("memory_format", "nhwc"), ("memory_format", None), ("memory_format", ["channels_last"]),
    ("feature_memory", "lots"), ("feature_memory", -1), ("feature_memory", 1.5),
    ("precision", "fp8"), ("precision", None),
]  # fmt: skip
OPTION_NAMES = {"n_clusters": "--hyper-classes", "rule": "activation rule", "split": "split point"}


@pytest.mark.parametrize(("field", "value"), BAD)
def test_every_bad_value_is_refused_naming_its_option(field, value):
    config = CPCNNConfig(**{field: value})
    with pytest.raises(ConfigError) as error:
        config.validate(num_classes=10)
    assert OPTION_NAMES.get(field, field) in str(error.value)


def test_every_field_has_a_bad_value_above():
    assert {field.name for field in dataclasses.fields(CPCNNConfig)} == {field for field, _ in BAD}


def test_the_hyper_class_count_is_bounded_by_the_data_when_it_is_known():
    CPCNNConfig(n_clusters=11).validate()
    with pytest.raises(ConfigError, match=r"--hyper-classes 11 .*\[2, 10\]"):
        CPCNNConfig(n_clusters=11).validate(num_classes=10)


@pytest.mark.parametrize(
    "config",
    [
        CPCNNConfig(),
        CPCNNConfig(tau=0.8, max_drop=1, split="layer1", configs="C0:L22,C1:L33,clustifier:LC", n_clusters=2, epochs=3,
                    quick=True, seed=7, rule="confusion", weighting="eq3", feature_copies=2, lr=0.1, distill=0.0,
                    head_distill=1.0, head_tolerance=0.5, memory_format="channels_last"),
    ],
)  # fmt: skip
def test_valid_configs_pass_and_to_dict_round_trips(config):
    assert config.validate(num_classes=10) is config
    assert CPCNNConfig(**config.to_dict()) == config
    assert CPCNNConfig(**json.loads(json.dumps(config.to_dict()))) == config


def test_a_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        CPCNNConfig().tau = 0.5


def test_configs_keys_and_names_are_checked_against_the_hyper_classes_and_the_split():
    config = CPCNNConfig(configs="C0:L22,C2:L1,clustifier:LC")
    config.check_hyper_class_count(3)
    with pytest.raises(ConfigError, match="'2' is neither 'clustifier' nor a hyper-class index 0..1"):
        config.check_hyper_class_count(2)
    CPCNNConfig(configs="L22,L33").check_split_point("layer1")
    CPCNNConfig(configs="L1,L3").check_split_point("layer1")
    with pytest.raises(ConfigError, match="'L3' is not available at split layer2"):
        CPCNNConfig(configs="L1,L3").check_split_point("layer2")
    assert config.parsed_configs == parse_configs(config.configs) == ({"0": "L22", "2": "L1", "clustifier": "LC"}, None)


def test_quick_trains_one_epoch_on_a_subset():
    assert CPCNNConfig(epochs=5).train_config().epochs == 5 and CPCNNConfig(epochs=5).train_images is None
    quick = CPCNNConfig(epochs=5, quick=True, lr=0.2, seed=3)
    assert (quick.train_config().epochs, quick.train_config().lr, quick.train_config().seed) == (1, 0.2, 3)
    assert quick.train_images == QUICK_TRAIN_IMAGES


def test_rule_and_weighting_default_to_auto_and_accept_a_fixed_choice():
    assert (CPCNNConfig().rule, CPCNNConfig().weighting) == ("auto", "auto")
    for rule, weighting in (("auto", "auto"), ("confusion", "auto"), ("auto", "eq3"), ("top", "clustifier")):
        CPCNNConfig(rule=rule, weighting=weighting).validate(num_classes=10)
    with pytest.raises(ConfigError, match="auto"):
        CPCNNConfig(weighting="Auto").validate(num_classes=10)
