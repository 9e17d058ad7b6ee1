"""Design-space exploration: vectorised TP sweep, Pareto frontier, oracle, max-drop choice."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dynacnn.errors import ConfigError
from dynacnn.mscnn.cache import StageOutputs
from dynacnn.mscnn.costs import CostModel, StageCost
from dynacnn.mscnn.explore import Point, cap_fc_grid, choose, drop_and_error, evaluate, oracle, pareto, sweep, tp_points

STAGES, CLASSES = 4, 7
COSTS = CostModel(tuple(StageCost(1000 * (s + 1), 50, 10, 20, 8 * (s + 1), 3, 5, CLASSES) for s in range(STAGES)))


def outputs(seed: int, batch: int = 50) -> StageOutputs:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(STAGES, batch, CLASSES, generator=generator) * 3
    labels = torch.randint(0, CLASSES, (batch,), generator=generator)
    logits[-1, torch.arange(batch), labels] += 2
    return StageOutputs(logits, [], labels)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**16), st.sampled_from([1, 5]))
def test_vectorised_tp_equals_simulation(seed: int, top_c: int) -> None:
    data = outputs(seed)
    grid = torch.rand(12, STAGES - 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 1.1
    for point in tp_points(data, COSTS, grid, top_c, "TP"):
        reference = evaluate(data, point.policy, COSTS)
        assert point.top1 == pytest.approx(reference.top1)
        assert point.top5 == pytest.approx(reference.top5)
        assert point.macs_per_image == pytest.approx(reference.macs_per_image)
        assert point.params_per_image == pytest.approx(reference.params_per_image)
        assert point.exits == pytest.approx(reference.exits)
        assert torch.equal(point.correct, reference.correct)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 100), st.floats(0, 1)), min_size=1, max_size=30))
def test_pareto_frontier(pairs: list[tuple[float, float]]) -> None:
    points = [Point("p", {}, top1, macs, 0.0) for macs, top1 in pairs]
    front = pareto(points)
    for p in points:
        assert any(f.macs_per_image <= p.macs_per_image and f.top1 >= p.top1 for f in front)
    for f in front:
        assert not any(p.macs_per_image <= f.macs_per_image and p.top1 > f.top1 for p in points)
    assert [f.macs_per_image for f in front] == sorted(f.macs_per_image for f in front)


def test_oracle_exits_at_the_first_correct_stage() -> None:
    logits = torch.zeros(STAGES, 3, CLASSES)
    labels = torch.tensor([0, 1, 2])
    logits[0, 0, 0] = logits[2, 1, 1] = 5.0
    logits[:, 2, 3] = 5.0
    result = oracle(StageOutputs(logits, [], labels), COSTS)
    assert result["exits"] == pytest.approx([2 / 3, 0, 1 / 3, 0])
    assert result["top1"] == pytest.approx(2 / 3)
    stage_macs = [s.macs for s in COSTS.stages]
    assert result["macs_per_image"] == pytest.approx((stage_macs[0] * 2 + sum(stage_macs[:3])) / 3)


def with_errors(name: str, wrong: int, macs: float, n: int = 1000) -> Point:
    """A point wrong on its first `wrong` of `n` images, where the full network is right on all."""
    correct = torch.ones(n, dtype=torch.bool)
    correct[:wrong] = False
    return Point(name, {}, correct.float().mean().item(), macs, 0.0, correct=correct)


def test_choose_takes_the_cheapest_within_max_drop() -> None:
    full = with_errors("full", 0, 100)
    points = [full, with_errors("b", 4, 40), with_errors("c", 10, 10)]
    assert choose(points, full, 0.5, z=0).name == "b"
    assert choose(points, full, 1.0, z=0).name == "c"
    assert choose(points, full, 0.0, z=0).name == "full"
    # One standard error of the paired difference: b's 0.4-point drop has an error of about 0.2 points.
    assert choose(points, full, 0.5, z=1).name == "full"
    assert choose(points, full, 0.65, z=1).name == "b"
    with pytest.raises(ConfigError, match="max-drop"):
        choose(points, full, -1)


def test_drop_and_error() -> None:
    drop, error = drop_and_error(with_errors("b", 4, 40), with_errors("full", 0, 100))
    assert drop == pytest.approx(0.004)
    assert error == pytest.approx((0.004 * 0.996 / 1000) ** 0.5)


def test_cap_fc_grid_is_non_increasing() -> None:
    grid = cap_fc_grid(STAGES, CLASSES)
    assert all(list(p.p_th) == sorted(p.p_th, reverse=True) for p in grid)
    assert (CLASSES,) * (STAGES - 1) in [p.p_th for p in grid]


def test_sweep_has_every_family() -> None:
    families = sweep(outputs(0), COSTS, CLASSES, quick=True)
    assert set(families) == {"TP-C5", "uniform-C5", "TP-C1", "uniform-C1", "CAP_FC", "PTHP", "full"}
    full = families["full"][0]
    assert full.macs_per_image == COSTS.full_macs
    never = [p for p in families["uniform-C1"] if p.settings["d_ct"][0] > 1]
    assert never and never[0].top1 == full.top1
