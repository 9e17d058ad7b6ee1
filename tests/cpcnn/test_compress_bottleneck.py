"""The compression flow on bottleneck backbones (torchvision ResNet-50, timm ResNet-50d): widths c_i, every head's
shape and gradients, S at every split, Table 1's MACs against a hand count at 224 px, and the backbone spec that
`load_cpcnn` rebuilds from."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision

from dynacnn.cpcnn.compress import (
    SPLIT_POINTS,
    TABLE1,
    CompressedBlock,
    available_configurations,
    build_head,
    configuration_costs,
    reduction_rows,
    shared_part,
    stage_shapes,
    stage_widths,
    table1_reduction,
)
from dynacnn.cpcnn.model import CPCNN
from dynacnn.cpcnn.serialize import backbone_spec, build_backbone, load_cpcnn, save_cpcnn
from dynacnn.errors import ConfigError
from dynacnn.flops import count_macs
from dynacnn.models import build_external, build_resnet

SHAPE = (3, 32, 32)


@pytest.fixture(scope="module")
def resnet50():
    torch.manual_seed(0)
    return build_external("torchvision:resnet50", 5).eval()


def test_stage_widths_are_the_base_widths_for_basic_and_bottleneck_blocks(resnet50):
    resnet18 = torchvision.models.resnet18(num_classes=5)
    for model in (resnet18, resnet50):
        assert stage_widths(model, stage_shapes(model, SHAPE)) == {1: 64, 2: 128, 3: 256, 4: 512}
    narrow = build_resnet("resnet18", 5, 3, 0.125, "small")
    assert stage_widths(narrow, stage_shapes(narrow, SHAPE)) == {1: 8, 2: 16, 3: 32, 4: 64}


@pytest.mark.parametrize("split", SPLIT_POINTS)
def test_every_configuration_builds_runs_and_trains(resnet50, split):
    x = torch.randn(2, *SHAPE)
    features = shared_part(resnet50, split)(x)
    for name in available_configurations(split):
        head = build_head(resnet50, split, name, 3, SHAPE).train()
        out = head(features)
        assert out.shape == (2, 3), name
        out.square().sum().backward()
        grads = [p.grad for p in head.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), name
        assert head.fc.weight.grad.abs().sum() > 0, name


def test_blocks_take_the_real_channels_and_end_with_c1(resnet50):
    """L1 on ResNet-50 at split layer3: (1x1, 512; 3x3, 512; 1x1, 64) on layer3's 1024 channels; LC goes to c4."""
    l1 = build_head(resnet50, "layer3", "L1", 3, SHAPE)
    (block,) = l1.body.children()
    assert isinstance(block, CompressedBlock) and not block.skip
    assert [block.conv1.in_channels, block.conv1.out_channels, block.conv2.out_channels] == [1024, 512, 512]
    assert block.conv3.out_channels == 64 and l1.fc.in_features == 64
    l4 = build_head(resnet50, "stem", "L4", 3, SHAPE)
    assert l4.body.layer1.conv1.in_channels == 64 and l4.body.layer1.skip  # stem 64 -> (c1, c1, c1): identity
    lc = build_head(resnet50, "layer2", "LC", 3, SHAPE)
    assert (lc.body.conv.in_channels, lc.body.conv.out_channels, lc.body.conv.stride) == (512, 256, (2, 2))


def test_kept_stages_start_from_the_trained_weights(resnet50):
    x = torch.randn(2, *SHAPE)
    classes = [4, 0, 2]
    for split in SPLIT_POINTS:
        head = build_head(resnet50, split, "L0", 3, SHAPE, classes).eval()
        with torch.no_grad():
            torch.testing.assert_close(head(shared_part(resnet50, split)(x)), resnet50(x)[:, classes])
    l2 = build_head(resnet50, "layer1", "L2", 3, SHAPE)
    assert torch.equal(l2.body.layer2[0].conv2.weight, resnet50.layer2[0].conv2.weight)
    assert l2.body.layer2[0].conv2.weight is not resnet50.layer2[0].conv2.weight


def test_timm_deep_stem_backbone_splits_and_compresses():
    pytest.importorskip("timm")
    torch.manual_seed(0)
    model = build_external("timm:resnet50d", 5).eval()
    x = torch.randn(2, *SHAPE)
    full = count_macs(model, torch.zeros(1, *SHAPE)).macs
    for split in SPLIT_POINTS:
        head = build_head(model, split, "L0", 5, SHAPE, list(range(5))).eval()
        with torch.no_grad():
            torch.testing.assert_close(head(shared_part(model, split)(x)), model(x))
        assert configuration_costs(model, split, SHAPE, 5, ["L0"])[0].macs == full
    assert build_head(model, "layer1", "L22", 5, SHAPE)(shared_part(model, "layer1")(x)).shape == (2, 5)


def conv(kernel: int, cin: int, cout: int, size: int) -> int:
    """MACs of one convolution with a size x size output."""
    return kernel * kernel * cin * cout * size * size


def bottleneck(cin: int, planes: int, size_in: int, stride: int) -> int:
    """A ResNet-50 (v1.5) bottleneck: 1x1, 3x3 (with the stride), 1x1 to 4*planes, and a projection if needed."""
    size = size_in // stride
    macs = conv(1, cin, planes, size_in) + conv(3, planes, planes, size) + conv(1, planes, 4 * planes, size)
    return macs + (conv(1, cin, 4 * planes, size) if stride != 1 or cin != 4 * planes else 0)


def stage(cin: int, planes: int, size_in: int, stride: int, depth: int) -> int:
    size = size_in // stride
    return bottleneck(cin, planes, size_in, stride) + (depth - 1) * bottleneck(4 * planes, planes, size, 1)


def test_resnet50_table1_macs_match_a_hand_count_at_224_px():
    """ResNet-50, ImageNet stem, 224x224, 1000 classes, S = stem; c = (64, 128, 256, 512), stage outputs 4x that."""
    stem, classes = conv(7, 3, 64, 112), 1000
    layer1, layer2 = stage(64, 64, 56, 1, 3), stage(256, 128, 56, 2, 4)
    layer3, layer4 = stage(512, 256, 28, 2, 6), stage(1024, 512, 14, 2, 3)
    l0 = stem + layer1 + layer2 + layer3 + layer4 + 2048 * classes
    # Table 1's blocks (widths c_i), stride 2 on the first 3x3 where the replaced stages halve the size.

    def b4(cin: int) -> int:  # layer4: (1x1, c4; 3x3/2, c4; 1x1, c1), 14 -> 7
        return conv(1, cin, 512, 14) + conv(3, 512, 512, 7) + conv(1, 512, 64, 7)

    def b3(cin: int) -> int:  # layer3: (1x1, c3; 3x3/2, c3; 1x1, c3), 28 -> 14
        return conv(1, cin, 256, 28) + conv(3, 256, 256, 14) + conv(1, 256, 256, 14)

    def b2(cin: int) -> int:  # layer2 (or layer1+layer2 in L44): (1x1, c2; 3x3/2, c2; 1x1, c2), 56 -> 28
        return conv(1, cin, 128, 56) + conv(3, 128, 128, 28) + conv(1, 128, 128, 28)

    def c34(cin: int) -> int:  # layer3+layer4: (3x3/2, c3; 1x1, c4; 3x3/2, c1), 28 -> 14 -> 7
        return conv(3, cin, 256, 14) + conv(1, 256, 512, 14) + conv(3, 512, 64, 7)

    b1 = conv(1, 64, 64, 56) + conv(3, 64, 64, 56) + conv(1, 64, 64, 56)  # layer1: (c1, c1, c1), 56 -> 56
    fc = 64 * classes
    expected = {
        "L0": l0,
        "L1": stem + layer1 + layer2 + layer3 + b4(1024) + fc,
        "L2": stem + layer1 + layer2 + b3(512) + b4(256) + fc,
        "L22": stem + layer1 + layer2 + c34(512) + fc,
        "L3": stem + layer1 + b2(256) + b3(128) + b4(256) + fc,
        "L33": stem + layer1 + b2(256) + c34(128) + fc,
        "L4": stem + b1 + b2(64) + b3(128) + b4(256) + fc,
        "L44": stem + b2(64) + c34(128) + fc,
    }
    rows = table1_reduction(classes, "torchvision:resnet50")
    assert [row["name"] for row in rows] == list(TABLE1)
    for row in rows:
        assert row["macs"] == expected[row["name"]], row["name"]
        assert row["reduction"] == pytest.approx(1 - expected[row["name"]] / l0)
        assert row["paper_reduction"] is None
    with torch.device("meta"):
        full = torchvision.models.resnet50(num_classes=classes).eval()
        assert count_macs(full, torch.zeros(1, 3, 224, 224)).macs == l0
    assert abs(l0 / 1e9 - 4.09) < 0.005  # torchvision's published ResNet-50 figure (its GFLOPS are MACs)


def test_reduction_rows_work_at_any_split(resnet50):
    rows = reduction_rows(resnet50, "layer2", SHAPE, 5)
    assert [row["name"] for row in rows] == list(available_configurations("layer2"))
    assert rows[0]["reduction"] == 0 and all(0 < row["reduction"] < 1 for row in rows[1:])
    with pytest.raises(ConfigError, match="inside S"):
        reduction_rows(resnet50, "layer2", SHAPE, 5, ["L3"])


@pytest.mark.parametrize("arch", ["torchvision:resnet50", "timm:resnet18", "timm:resnet50d"])
def test_spec_round_trip_rebuilds_the_architecture(arch):
    if arch.startswith("timm:"):
        pytest.importorskip("timm")
    torch.manual_seed(0)
    model = build_external(arch, 5, in_channels=1).eval()
    spec = json.loads(json.dumps(backbone_spec(model)))
    assert spec["kind"] == "external" and spec["arch"] == arch
    assert (spec["num_classes"], spec["in_channels"]) == (5, 1)
    rebuilt = build_backbone(spec).eval()
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


def test_spec_keeps_stem_modifications_and_reads_the_older_torchvision_kind():
    model = torchvision.models.resnet18(num_classes=4)
    model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    model.maxpool = torch.nn.Identity()
    spec = backbone_spec(model)
    assert (spec["arch"], spec["conv1"], spec["maxpool"]) == ("torchvision:resnet18", [64, 3, 1, 1], False)
    older = {"kind": "torchvision", "arch": "resnet18", "num_classes": 4, "in_channels": 3}
    for description in (spec, {**older, "conv1": [64, 3, 1, 1], "maxpool": False}):
        rebuilt = build_backbone(description).eval()
        rebuilt.load_state_dict(model.state_dict())
        x = torch.randn(2, 3, 16, 16)
        with torch.no_grad():
            assert torch.equal(rebuilt(x), model.eval()(x))
    with pytest.raises(ConfigError, match="cannot describe"):
        backbone_spec(torchvision.models.resnext50_32x4d(num_classes=4))


def test_load_cpcnn_rebuilds_a_resnet50_cpcnn(resnet50, tmp_path):
    members = [[0, 3], [1, 2, 4]]
    heads = [build_head(resnet50, "layer2", name, len(group), SHAPE) for name, group in zip(("L1", "L22"), members)]
    clustifier = build_head(resnet50, "layer2", "LC", 2, SHAPE)
    model = CPCNN(shared_part(resnet50, "layer2"), clustifier, heads, members, torch.eye(2), SHAPE).eval()
    meta = {"backbone": backbone_spec(resnet50), "split": "layer2", "clustifier": "LC", "heads": ["L1", "L22"]}
    save_cpcnn(model, tmp_path, meta)
    loaded = load_cpcnn(tmp_path)
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        features = loaded.shared(x)
        torch.testing.assert_close(features, model.shared(x))
        torch.testing.assert_close(loaded.clustifier(features), model.clustifier(features))
        for ours, theirs in zip(loaded.heads, model.heads):
            torch.testing.assert_close(ours(features), theirs(features))
