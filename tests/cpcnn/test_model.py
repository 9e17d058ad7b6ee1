"""Routed CP-CNN: routed == dense, per-image MACs == what the flop counter saw run, trivial heads, torchvision input;
forward returns the probabilities, route the details."""

from __future__ import annotations

import pytest
import torch
import torchvision

from dynacnn.cpcnn.compress import build_head, shared_part
from dynacnn.cpcnn.model import CPCNN, TrivialHead
from dynacnn.cpcnn.policy import activate
from dynacnn.errors import ConfigError
from dynacnn.flops import count_call_macs
from dynacnn.models import build_resnet
from dynacnn.models.fold import fold_batchnorm

SHAPE = (3, 16, 16)
MEMBERS = [[0, 3, 5], [1], [2, 4], [6, 7, 8]]


def _cpcnn(backbone: torch.nn.Module, split: str = "layer2", configs=("L1", None, "L22", "L0"), shape=SHAPE) -> CPCNN:
    torch.manual_seed(0)
    heads = [
        TrivialHead() if name is None else build_head(backbone, split, name, len(group), shape, group)
        for name, group in zip(configs, MEMBERS)
    ]
    confusion = torch.randint(0, 30, (4, 4)).double() + 300 * torch.eye(4)
    model = CPCNN(
        shared_part(backbone, split), build_head(backbone, split, "LC", 4, shape), heads, MEMBERS, confusion, shape
    )
    for module in model.modules():  # non-trivial BatchNorm statistics, so that gathers would show up
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture(scope="module")
def model() -> CPCNN:
    torch.manual_seed(0)
    return _cpcnn(build_resnet("resnet18", 9, 3, 0.125, "small").eval())


@pytest.mark.parametrize("tau", [0.3, 0.6, 0.9, 1.0])
@pytest.mark.parametrize("rule", ["top", "confusion"])
@pytest.mark.parametrize("weighting", ["eq3", "clustifier"])
def test_routed_equals_dense_and_macs_match_the_flop_counter(model, tau, rule, weighting):
    model.set_policy(tau, rule, weighting)
    x = torch.randn(37, *SHAPE, generator=torch.Generator().manual_seed(1))
    routed = model.route(x)
    dense = model.forward_dense(x)
    assert torch.allclose(routed.probs, dense.probs, atol=1e-6)
    assert torch.equal(routed.active, dense.active)
    assert torch.allclose(routed.probs.sum(1), torch.ones(37), atol=1e-5)
    executed, _ = count_call_macs(model, x)
    assert executed == int(routed.macs.sum())
    expected = model.fixed_macs + (routed.active.long() * model.head_macs).sum(1)
    assert torch.equal(routed.macs, expected)
    if tau == 1.0:
        assert routed.active.all()


def test_heads_no_image_activates_cost_nothing(model):
    model.set_policy(0.01, "top")
    x = torch.randn(5, *SHAPE)
    routed = model.route(x)
    executed, _ = count_call_macs(model, x)
    assert routed.active.sum(1).eq(1).all()
    assert executed == int(routed.macs.sum()) < 5 * (model.fixed_macs + int(model.head_macs.sum()))


def test_trivial_head_returns_its_weight_for_its_class_at_zero_cost(model):
    assert model.head_macs[1] == 0
    model.set_policy(1.0, "top", "clustifier")
    x = torch.randn(4, *SHAPE)
    routed = model.route(x)
    with torch.inference_mode():
        v = torch.softmax(model.clustifier(model.shared(x)), dim=1)
    assert torch.allclose(routed.probs[:, 1], v[:, 1], atol=1e-6)


def test_torchvision_resnet18_instance_converts():
    torch.manual_seed(0)
    backbone = torchvision.models.resnet18(num_classes=9).eval()
    shape = (3, 32, 32)
    model = _cpcnn(backbone, "layer3", ("L1", None, "LP", "L0"), shape).set_policy(1.0)
    x = torch.randn(6, *shape)
    routed = model.route(x)
    assert torch.allclose(routed.probs, model.forward_dense(x).probs, atol=1e-6)
    assert count_call_macs(model, x)[0] == int(routed.macs.sum())


def test_bad_structure_is_refused():
    backbone = build_resnet("resnet18", 9, 3, 0.125, "small")
    shared, clustifier = shared_part(backbone, "layer3"), build_head(backbone, "layer3", "LP", 4, SHAPE)
    heads = [TrivialHead()] * 4
    with pytest.raises(ConfigError, match="partition"):
        CPCNN(shared, clustifier, heads, [[0, 1], [1], [2], [3]], torch.eye(4), SHAPE)
    with pytest.raises(ConfigError, match="one head per hyper-class"):
        CPCNN(shared, clustifier, heads[:3], MEMBERS, torch.eye(4), SHAPE)
    with pytest.raises(ConfigError, match="confusion"):
        CPCNN(shared, clustifier, heads, MEMBERS, torch.eye(3), SHAPE)
    model = CPCNN(shared, clustifier, heads, MEMBERS, torch.eye(4), SHAPE)
    with pytest.raises(ConfigError, match="tau"):
        model.set_policy(1.5)


def test_channels_last_routing_keeps_the_format_and_the_result(model):
    model.set_policy(0.6, "top", "clustifier")
    x = torch.randn(19, *SHAPE, generator=torch.Generator().manual_seed(2))
    expected = model.route(x)
    fast = _cpcnn(build_resnet("resnet18", 9, 3, 0.125, "small").eval())
    fast.load_state_dict(model.state_dict())
    fast.set_policy(0.6, "top", "clustifier").to(memory_format=torch.channels_last)
    formats = []
    for head in (fast.heads[0], fast.heads[2], fast.heads[3]):
        head.register_forward_pre_hook(
            lambda _, args: formats.append(args[0].is_contiguous(memory_format=torch.channels_last))
        )
    routed = fast.route(x.contiguous(memory_format=torch.channels_last))
    assert formats and all(formats)
    assert torch.allclose(routed.probs, expected.probs, atol=1e-5)
    assert torch.equal(routed.macs, expected.macs)


def test_folded_batchnorms_route_alike(model):
    model.set_policy(0.6, "confusion", "eq3")
    x = torch.randn(23, *SHAPE, generator=torch.Generator().manual_seed(3))
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    routed, expected = folded.route(x), model.route(x)
    assert torch.allclose(routed.probs, expected.probs, atol=1e-5)
    assert torch.equal(routed.active, expected.active) and torch.equal(routed.macs, expected.macs)


def test_forward_is_a_plain_classifier_returning_the_routed_probabilities(model):
    model.set_policy(0.6, "confusion", "eq3")
    x = torch.randn(11, *SHAPE, generator=torch.Generator().manual_seed(4))
    probs = model(x)
    assert isinstance(probs, torch.Tensor) and probs.shape == (11, 9) and probs.dtype == torch.float32
    assert torch.equal(probs, model.route(x).probs)
    probs[:, 0] = 0  # an ordinary tensor: user code may modify it
    executed, _ = count_call_macs(model, x)
    assert executed == int(model.route(x).macs.sum())


def test_routing_under_autocast_stays_float32_and_close(model):
    model.set_policy(1.0, "top", "eq3")
    x = torch.randn(16, *SHAPE, generator=torch.Generator().manual_seed(5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        routed = model.route(x)
    expected = model.route(x)
    assert routed.probs.dtype == torch.float32
    torch.testing.assert_close(routed.probs.sum(1), torch.ones(16))
    assert torch.equal(routed.active, expected.active)
    assert (routed.probs - expected.probs).abs().max() < 0.05


@pytest.mark.parametrize("tau", [0.3, 0.6, 0.9, 1.0])
@pytest.mark.parametrize(("rule", "weighting"), [("top", "clustifier"), ("confusion", "eq3"), ("top", "eq3")])
def test_one_image_routes_as_it_does_inside_a_batch(model, tau, rule, weighting):
    # one image takes the plain-Python policy (dynacnn.routing), a batch the vectorised one
    model.set_policy(tau, rule, weighting)
    x = torch.randn(23, *SHAPE, generator=torch.Generator().manual_seed(2))
    whole = model.route(x)
    for index in range(len(x)):
        one = model.route(x[index : index + 1])
        assert torch.equal(one.active[0], whole.active[index]) and one.macs[0] == whole.macs[index]
        assert torch.allclose(one.probs[0], whole.probs[index], rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_one_image_policy_equals_the_vectorised_one_ties_and_nan_included(model, dtype):
    levels = torch.tensor([0.0, 0.05, 0.1, 0.25, 0.3, 0.5], dtype=dtype)
    rows = levels[torch.randint(0, 6, (300, 4), generator=torch.Generator().manual_seed(3))]
    rows = torch.cat([rows, torch.tensor([[float("nan"), 0.5, 0.25, 0.25]], dtype=dtype)])
    for rule, weighting in (("top", "clustifier"), ("confusion", "eq3"), ("confusion", "clustifier")):
        for tau in (0.1, 0.3, 0.55, 1.0):
            model.set_policy(tau, rule, weighting)
            active, weights = activate(rows, model.confusion.to(dtype), tau, rule, weighting)
            for index, row in enumerate(rows):
                got_active, got_weights = model.policy(row[None])
                assert torch.equal(got_active[0], active[index]) and got_weights.dtype == dtype
                torch.testing.assert_close(got_weights[0], weights[index], rtol=2 * torch.finfo(dtype).eps, atol=0)
