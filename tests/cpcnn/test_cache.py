"""S's outputs cached or recomputed per batch: the memory plan, the budget option, and the same trained components."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dynacnn.cpcnn.cache import CachedSplit, RecomputedSplit, cache_split, plan_features, shared_outputs
from dynacnn.cpcnn.compress import shared_part
from dynacnn.cpcnn.config import CPCNNConfig, parse_memory
from dynacnn.cpcnn.model import TrivialHead
from dynacnn.cpcnn.training import ComponentTrainer
from dynacnn.data import load_dataset, normalize
from dynacnn.errors import ConfigError
from dynacnn.models import build_resnet

MEMBERS = [[0, 2], [1, 3]]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def setup():
    """Tiny synthetic data (crop augmentation) and an untrained tiny ResNet-18 split after layer1."""
    data = load_dataset(
        "synthetic",
        num_classes=4,
        num_groups=2,
        image_size=12,
        channels=1,
        samples_per_class=100,
        test_samples_per_class=4,
        calib_fraction=0.25,
    )
    torch.manual_seed(0)
    backbone = build_resnet("resnet18", 4, 1, 0.0625, "small").eval()
    return data, backbone, shared_part(backbone, "layer1")


def test_plan_caches_parts_in_order_while_the_budget_lasts():
    sizes = {"train": 100, "calib": 10, "test": 30}
    assert plan_features(140, sizes) == {"train": "cache", "calib": "cache", "test": "cache"}
    assert plan_features(139, sizes) == {"train": "cache", "calib": "cache", "test": "recompute"}
    assert plan_features(99, sizes) == {"train": "recompute", "calib": "cache", "test": "cache"}
    assert plan_features(0, sizes) == {"train": "recompute", "calib": "recompute", "test": "recompute"}


def test_feature_memory_sizes_and_the_auto_budget(monkeypatch):
    assert [parse_memory(v) for v in ("auto", 0, 4096, "8GB", "1.5 GiB", "512MiB", "64k")] == [
        None, 0, 4096, 8 * 10**9, 3 * 2**29, 2**29, 64_000,
    ]  # fmt: skip
    for bad in ("lots", -1, 1.5, True, "8 GBs", None):
        with pytest.raises(ConfigError, match="feature_memory"):
            CPCNNConfig(feature_memory=bad).validate()
    monkeypatch.setattr("dynacnn.cpcnn.config.available_memory", lambda: 1000)
    assert CPCNNConfig().feature_budget() == 500 and CPCNNConfig(feature_memory="1KiB").feature_budget() == 1024


def test_shared_outputs_follow_the_plan_and_agree(setup):
    data, backbone, shared = setup
    full, record = shared_outputs(backbone, shared, "layer1", data, CPU, CPCNNConfig(feature_memory="1GB"))
    assert record["modes"] == {"train": "cache", "calib": "cache", "test": "cache"}
    per_image = record["bytes_per_image"]
    assert per_image == full["calib"].features[0].numel() * 4
    assert record["bytes"]["calib"] == len(data.calib) * per_image
    assert record["bytes"]["train"] == len(data.train) * (per_image + 4 * 4)  # S's outputs and 4 teacher logits
    budget = record["bytes"]["calib"] + record["bytes"]["test"]
    mixed, record = shared_outputs(backbone, shared, "layer1", data, CPU, CPCNNConfig(feature_memory=budget))
    assert record["modes"] == {"train": "recompute", "calib": "cache", "test": "cache"}
    assert isinstance(mixed["train"], RecomputedSplit) and isinstance(mixed["calib"], CachedSplit)
    expected = shared(normalize(data.calib.images, data.info))  # an independent pass over the images
    torch.testing.assert_close(full["calib"].features, expected)
    recomputed = RecomputedSplit(shared, data.calib, data.info)
    head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(expected[0].numel(), 2))
    probs = recomputed.probs([head, TrivialHead()], CPU)
    cached = full["calib"].probs([head, TrivialHead()], CPU)
    torch.testing.assert_close(probs[0], cached[0])
    assert torch.equal(probs[1], torch.ones(len(data.calib), 1, dtype=torch.float64))
    assert recomputed.example(CPU).shape == full["calib"].example(CPU).shape


def test_recomputing_s_trains_the_same_clustifier_and_heads_as_caching(setup, tmp_path: Path):
    data, backbone, shared = setup
    trained = {}
    for budget in ("1GB", 0):
        config = CPCNNConfig(quick=True, feature_memory=budget, memory_format="contiguous")
        cache, record = shared_outputs(backbone, shared, "layer1", data, CPU, config)
        out = tmp_path / str(budget)
        trainer = ComponentTrainer(
            backbone, data.info.input_shape, torch.contiguous_format, MEMBERS, out, config, CPU, False
        )
        clustifier, clustifier_record = trainer.clustifier("layer1", "LC", cache)
        heads = trainer.heads("layer1", 1, ["L0", "L22"], cache)
        probs = cache["calib"].probs([clustifier], CPU)[0]
        trained[budget] = (clustifier, clustifier_record, heads, probs, record, trainer)
    cached, recomputed = trained["1GB"], trained[0]
    assert set(recomputed[4]["modes"].values()) == {"recompute"} and set(cached[4]["modes"].values()) == {"cache"}
    torch.testing.assert_close(cached[0].state_dict(), recomputed[0].state_dict())
    torch.testing.assert_close(cached[3], recomputed[3])
    assert cached[1]["calib_top1"] == pytest.approx(recomputed[1]["calib_top1"])
    for name in ("L0", "L22"):
        torch.testing.assert_close(cached[2][name][0].state_dict(), recomputed[2][name][0].state_dict())
        assert cached[2][name][1]["calib_top1"] == pytest.approx(recomputed[2][name][1]["calib_top1"])
        assert cached[2][name][1]["identity"] == recomputed[2][name][1]["identity"]
    before = cached[5].make_head("layer1", "L22", 2, MEMBERS[1]).state_dict()
    after = cached[2]["L22"][0].state_dict()
    assert any(not torch.equal(before[key], after[key]) for key in before if before[key].is_floating_point())


def test_copies_augment_the_same_share_of_samples_cached_or_recomputed(setup):
    data, _, shared = setup
    cached = cache_split(shared, data, "train", CPU, copies=3, seed=4)
    clean = shared(normalize(data.train.images, data.info))
    torch.testing.assert_close(cached.features[0], clean)
    assert not torch.allclose(cached.features[1], clean) and not torch.allclose(cached.features[1], cached.features[2])
    recomputed = RecomputedSplit(shared, data.train, data.info, copies=3)
    batches = recomputed.training_batches(torch.arange(4), None, None, 16)
    batches.shuffle = False
    features = torch.cat([x for x, _ in batches(torch.Generator().manual_seed(0), CPU)])
    unchanged = sum(torch.allclose(a, b) for a, b in zip(features, clean)) / len(clean)
    assert 0.1 < unchanged < 0.6  # about 1 / copies of the samples stay clean
