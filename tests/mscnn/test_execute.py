"""Executed paths really skip work and agree with the cached (simulated) policies."""

from __future__ import annotations

import pytest
import torch

from dynacnn.errors import ConfigError
from dynacnn.flops import count_call_macs
from dynacnn.mscnn.costs import measure_costs
from dynacnn.mscnn.execute import execute
from dynacnn.mscnn.policies import cap_fc_policy, full_policy, pthp_policy, simulate, tp_policy

from .helpers import CLASSES, tiny_model

STAGES = 3


def policies():
    return [
        full_policy(STAGES, CLASSES),
        tp_policy((0.95, 0.999), STAGES, CLASSES, top_c=1),
        tp_policy((0.9999, 0.99999), STAGES, CLASSES, top_c=5),
        tp_policy((0.0, 0.0), STAGES, CLASSES, top_c=1),
        cap_fc_policy((4, 2), STAGES, CLASSES),
        cap_fc_policy((CLASSES, CLASSES), STAGES, CLASSES),
        pthp_policy((0.99, 0.999), (0.9, 0.95), STAGES, CLASSES, top_c=1),
        pthp_policy((0.9999, 0.9999), (0.99, 0.99), STAGES, CLASSES, top_c=2),
    ]


@pytest.fixture(params=[(), (5,)], ids=["fc", "hidden-fc"])
def model(request):
    return tiny_model(stages=STAGES, hidden=request.param, pool=2)


@pytest.mark.parametrize("policy", policies(), ids=lambda p: f"{p.kind}-{p.settings()}")
def test_executed_matches_cached_and_cost_model(model, images, policy) -> None:
    with torch.no_grad():
        logits = torch.stack(model(images))
    cached = simulate(logits, policy)
    if policy.kind == "TP" and policy.d_ct[0] > 0:
        assert 0 < (cached.exit_stage == 0).sum() < len(images)
    macs, executed = count_call_macs(execute, model, images, policy)
    assert torch.equal(executed.exit_stage, cached.exit_stage)
    assert torch.equal(executed.kept, cached.kept)
    assert torch.equal(executed.pred, cached.pred)
    torch.testing.assert_close(executed.probs, cached.probs, atol=1e-5, rtol=1e-5)
    assert macs == measure_costs(model, (1, 12, 12)).macs(executed.kept).sum().item()


def test_exits_shrink_the_batch(model, images) -> None:
    with torch.no_grad():
        top = torch.stack(model(images)).softmax(2).max(2).values
    d_ct = (top[0].median().item(), top[1].median().item())
    seen: list[int] = []
    hooks = [body.register_forward_pre_hook(lambda _, args: seen.append(len(args[0]))) for body in model.bodies]
    decision = execute(model, images, tp_policy(d_ct, STAGES, CLASSES, top_c=1))
    for hook in hooks:
        hook.remove()
    remaining = [int((decision.exit_stage >= s).sum()) for s in range(STAGES)]
    assert seen == [r for r in remaining if r]
    assert seen[0] == len(images) and seen[-1] < len(images)


def test_pruned_classes_save_macs(model, images) -> None:
    full, _ = count_call_macs(execute, model, images, full_policy(STAGES, CLASSES))
    pruned, _ = count_call_macs(execute, model, images, cap_fc_policy((2, 1), STAGES, CLASSES))
    rows_saved = (CLASSES - 2) * model.heads[1].fc.in_features + (CLASSES - 1) * model.heads[2].fc.in_features
    assert full - pruned == rows_saved * len(images)


@pytest.mark.parametrize("policy", policies(), ids=lambda p: f"{p.kind}-{p.settings()}")
def test_batch_fc_rows_decide_alike_and_count_the_rows_each_sub_batch_ran(model, images, policy) -> None:
    per_image = execute(model, images, policy)
    macs, batched = count_call_macs(execute, model, images, policy, "batch")
    assert torch.equal(batched.exit_stage, per_image.exit_stage) and torch.equal(batched.pred, per_image.pred)
    torch.testing.assert_close(batched.probs, per_image.probs, atol=1e-5, rtol=1e-5)
    assert macs == measure_costs(model, (1, 12, 12)).macs(batched.kept).sum().item()
    for stage in range(STAGES):
        active = per_image.exit_stage >= stage
        assert (batched.kept[stage][~active] == 0).all()
        if active.any():
            rows = batched.kept[stage][active]
            assert (rows == rows[0]).all() and per_image.kept[stage][active].max() <= rows[0] <= CLASSES
    for i in range(3):
        single = execute(model, images[i : i + 1], policy, "batch")
        assert torch.equal(single.kept, execute(model, images[i : i + 1], policy).kept)


def test_unknown_fc_rows_is_refused(model, images) -> None:
    with pytest.raises(ConfigError, match="fc_rows 'rows'"):
        execute(model, images, full_policy(STAGES, CLASSES), "rows")
