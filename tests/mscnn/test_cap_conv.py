"""CAP_CONV (Alg. 3): Pre ordering, Maj voting, sliced execution agreeing with the cached path."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dynacnn.errors import ConfigError
from dynacnn.flops import count_call_macs
from dynacnn.models.fold import fold_batchnorm
from dynacnn.mscnn.cache import collect
from dynacnn.mscnn.cap_conv import (
    execute_cap_conv,
    filter_importance,
    ignorant_filters,
    majority_filters,
    simulate_cap_conv,
)
from dynacnn.mscnn.costs import measure_costs
from dynacnn.mscnn.execute import execute
from dynacnn.mscnn.policies import full_policy
from dynacnn.train import TensorBatches

from .helpers import CLASSES, tiny_data, tiny_model

STAGES, FILTERS = 3, 8


@pytest.fixture(scope="module")
def setup():
    model = tiny_model(stages=STAGES, pool=2)
    x, y = tiny_data(90, seed=2)
    outputs = collect(model, TensorBatches(x, y, 32))
    return model, outputs, filter_importance(model, outputs)


def test_importance_orders_every_filter(setup) -> None:
    model, outputs, importance = setup
    for stage in range(STAGES):
        assert importance.per_class[stage].shape == (CLASSES, FILTERS)
        assert (importance.per_class[stage].sort(1).values == torch.arange(FILTERS)).all()
        assert sorted(importance.overall[stage].tolist()) == list(range(FILTERS))


@pytest.mark.parametrize("smart", [True, False])
def test_rm_zero_is_no_pruning(setup, images, smart: bool) -> None:
    model, outputs, importance = setup
    cached = simulate_cap_conv(model, outputs, importance, (3, 3), 0, smart)
    torch.testing.assert_close(cached.probs, outputs.logits[-1].softmax(1))
    executed = execute_cap_conv(model, images, importance, (3, 3), 0, smart)
    full = execute(model, images, full_policy(STAGES, CLASSES))
    assert torch.equal(executed.pred, full.pred)
    torch.testing.assert_close(executed.probs, full.probs)


@pytest.mark.parametrize("smart", [True, False])
@pytest.mark.parametrize("rm,p_th", [(2, (1, 1)), (4, (3, 2)), (7, (CLASSES, 1))])
def test_sliced_execution_matches_cached_and_cost_model(setup, smart: bool, rm: int, p_th: tuple[int, int]) -> None:
    model, _, importance = setup
    x, y = tiny_data(48, seed=3)
    outputs = collect(model, TensorBatches(x, y, 48))
    cached = simulate_cap_conv(model, outputs, importance, p_th, rm, smart)
    macs, executed = count_call_macs(execute_cap_conv, model, x, importance, p_th, rm, smart)
    assert torch.equal(executed.pred, cached.pred)
    torch.testing.assert_close(executed.probs, cached.probs, atol=1e-5, rtol=1e-5)
    removed = torch.tensor([0] + [rm] * (STAGES - 1))
    assert macs == measure_costs(model, (1, 12, 12)).macs(executed.kept, removed).sum().item()


def test_sliced_execution_of_a_folded_model_matches(setup) -> None:
    model, _, importance = setup
    generator = torch.Generator().manual_seed(4)
    model = copy.deepcopy(model)
    for module in model.modules():  # statistics far from identity, so that a wrongly sliced bias shows
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.rand(module.num_features, generator=generator) - 0.5)
            module.bias.data.copy_(torch.rand(module.num_features, generator=generator) - 0.5)
    folded = fold_batchnorm(model)
    assert all(isinstance(folded.bodies[s].last[1], torch.nn.Identity) for s in range(STAGES))
    x, _ = tiny_data(40, seed=5)
    expected, executed = (
        execute_cap_conv(model, x, importance, (2, 1), 3),
        execute_cap_conv(folded, x, importance, (2, 1), 3),
    )
    assert torch.equal(executed.pred, expected.pred)
    torch.testing.assert_close(executed.probs, expected.probs, atol=1e-5, rtol=1e-5)


def test_smart_removal_depends_on_the_classes(setup) -> None:
    _, outputs, importance = setup
    removed = majority_filters(outputs.probs[0], importance.per_class[1], 1, 3)
    assert len({tuple(r) for r in removed.tolist()}) > 1
    assert (ignorant_filters(importance.overall[1], 5, 3) == importance.overall[1][:3].sort().values).all()


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**16), st.integers(1, CLASSES), st.integers(0, FILTERS - 1))
def test_majority_filters(seed: int, p_th: int, rm: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    order = torch.stack([torch.randperm(FILTERS, generator=generator) for _ in range(CLASSES)])
    probs = torch.rand(20, CLASSES, generator=generator).softmax(1)
    removed = majority_filters(probs, order, p_th, rm)
    assert removed.shape == (20, rm)
    assert all(len(set(row)) == rm for row in removed.tolist())
    top = probs.topk(p_th, dim=1).indices
    for row, classes in zip(removed.tolist(), top.tolist()):
        candidates = {f for c in classes for f in order[c, :rm].tolist()}
        assert set(row) <= candidates or len(candidates) < rm
        if p_th == 1:
            assert set(row) == set(order[classes[0], :rm].tolist())


@pytest.mark.parametrize("rm", [FILTERS, FILTERS + 3, -1])
def test_rm_out_of_range(setup, images, rm: int) -> None:
    model, outputs, importance = setup
    with pytest.raises(ConfigError, match="rm="):
        simulate_cap_conv(model, outputs, importance, (2, 2), rm)
    with pytest.raises(ConfigError, match="rm="):
        execute_cap_conv(model, images, importance, (2, 2), rm)


def test_p_th_out_of_range(setup) -> None:
    model, outputs, importance = setup
    with pytest.raises(ConfigError, match="P_th"):
        simulate_cap_conv(model, outputs, importance, (0, 2), 2)
    with pytest.raises(ConfigError, match="P_th"):
        simulate_cap_conv(model, outputs, importance, (2,), 2)
