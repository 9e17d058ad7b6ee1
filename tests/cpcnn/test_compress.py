"""Shared part S and the Table 1 compression family: shapes for both stems, MAC structure, skip and stride rules."""

from __future__ import annotations

import pytest
import torch
import torchvision

from dynacnn.cpcnn.compress import (
    PAPER_REDUCTION,
    SPLIT_POINTS,
    TABLE1,
    CompressedBlock,
    available_configurations,
    build_head,
    configuration_costs,
    shared_part,
    table1_reduction,
)
from dynacnn.errors import ConfigError
from dynacnn.flops import count_macs
from dynacnn.models import build_resnet

CASES = [("small", (3, 12, 12)), ("small-pool", (1, 14, 14)), ("imagenet", (3, 40, 40))]


@pytest.fixture(scope="module", params=CASES, ids=[stem for stem, _ in CASES])
def backbone(request):
    stem, shape = request.param
    torch.manual_seed(0)
    return build_resnet("resnet18", 7, shape[0], 0.125, stem).eval(), shape


@pytest.mark.parametrize("split", SPLIT_POINTS)
def test_every_configuration_has_the_right_output_shape(backbone, split):
    model, shape = backbone
    x = torch.randn(2, *shape)
    shared = shared_part(model, split)
    features = shared(x)
    for name in available_configurations(split):
        head = build_head(model, split, name, 3, shape).eval()
        assert head(features).shape == (2, 3), name


def test_shared_part_is_a_frozen_copy_of_the_first_layers(backbone):
    model, shape = backbone
    x = torch.randn(2, *shape)
    shared = shared_part(model, "layer2")
    assert not any(p.requires_grad for p in shared.parameters())
    assert not shared.training
    with torch.no_grad():
        expected = model.layer2(model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(x))))))
        assert torch.allclose(shared(x), expected)
    shared[0].weight.data.zero_()
    assert model.conv1.weight.abs().sum() > 0


def test_l0_head_from_the_backbone_reproduces_its_logits(backbone):
    model, shape = backbone
    x = torch.randn(3, *shape)
    classes = [5, 1, 3]
    head = build_head(model, "layer1", "L0", 3, shape, classes).eval()
    with torch.no_grad():
        assert torch.allclose(head(shared_part(model, "layer1")(x)), model(x)[:, classes], atol=1e-5)


def test_shared_plus_l0_head_costs_what_the_backbone_costs(backbone):
    model, shape = backbone
    full = count_macs(model, torch.zeros(1, *shape)).macs
    for split in SPLIT_POINTS:
        rows = configuration_costs(model, split, shape, 7, ["L0"])
        assert rows[0].macs == full
        assert rows[0].shared_macs + rows[0].head_macs == full


def test_table1_macs_are_ordered_as_the_compression_deepens():
    """Each configuration replaces a superset of the previous one's work: L0 > L1 > L2 > L22 > L3 > L33 > L4 > L44."""
    model = build_resnet("resnet18", 10, 3, 0.25, "imagenet").eval()
    macs = {row.name: row.macs for row in configuration_costs(model, "stem", (3, 64, 64), 10, list(TABLE1))}
    order = list(TABLE1)
    assert all(macs[a] > macs[b] for a, b in zip(order, order[1:]))
    assert macs["L2"] > macs["L22"] and macs["L3"] > macs["L33"] and macs["L4"] > macs["L44"]


def test_table1_reduction_matches_the_paper_within_half_a_point():
    rows = table1_reduction()
    assert [row["name"] for row in rows] == list(TABLE1)
    for row in rows:
        assert abs(row["reduction"] - PAPER_REDUCTION[row["name"]]) < 0.005, row["name"]
        assert row["macs"] == row["shared_macs"] + row["head_macs"]


def test_table1_on_torchvision_resnet18_agrees_with_flop_counter():
    with torch.device("meta"):
        model = torchvision.models.resnet18(num_classes=100).eval()
        rows = configuration_costs(model, "stem", (3, 224, 224), 100, ["L0", "L1"])
        full = count_macs(model, torch.zeros(1, 3, 224, 224)).macs
    assert rows[0].macs == full
    # L1 replaces layer4 (two BasicBlocks + projection) by 1x1 256->512 @14x14, 3x3/2 512->512 @7x7, 1x1 512->64 @7x7.
    layer4 = 9 * 256 * 512 * 49 + 3 * 9 * 512 * 512 * 49 + 256 * 512 * 49
    bottleneck = 256 * 512 * 196 + 9 * 512 * 512 * 49 + 512 * 64 * 49
    assert full - rows[1].macs == layer4 - bottleneck + (512 - 64) * 100


@pytest.mark.parametrize("size", [7, 8, 15])
def test_block_stride_and_skip_rules(size):
    x = torch.randn(2, 8, size, size)
    same = CompressedBlock(8, (4, 4, 8), (1, 3, 1), halvings=1).eval()
    assert same.skip and same(x).shape == (2, 8, (size + 1) // 2, (size + 1) // 2)
    wider = CompressedBlock(8, (4, 4, 16), (1, 3, 1), halvings=0).eval()
    assert not wider.skip and wider(x).shape == (2, 16, size, size)
    twice = CompressedBlock(8, (8, 16, 4), (3, 1, 3), halvings=2).eval()
    assert twice(x).shape == (2, 4, ((size + 1) // 2 + 1) // 2, ((size + 1) // 2 + 1) // 2)
    with pytest.raises(ConfigError):
        CompressedBlock(8, (4, 4, 8), (1, 3, 1), halvings=2)


@pytest.mark.parametrize("split", ["layer4", "layer5", "fc", ""])
def test_split_point_past_the_end_is_refused(split):
    model = build_resnet("resnet18", 4, 1, 0.125, "small")
    with pytest.raises(ConfigError, match="split point"):
        shared_part(model, split)


def test_unavailable_or_unknown_configuration_is_refused():
    model = build_resnet("resnet18", 4, 1, 0.125, "small")
    with pytest.raises(ConfigError, match="inside S"):
        build_head(model, "layer2", "L3", 2, (1, 8, 8))
    with pytest.raises(ConfigError, match="unknown configuration"):
        build_head(model, "layer2", "L9", 2, (1, 8, 8))
    with pytest.raises(ConfigError, match="torchvision's attribute names"):
        shared_part(torch.nn.Linear(2, 2), "stem")
