"""Alg. 1 / Eq. 1 activation sets and Eq. 3 weights: properties over random batches, and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dynacnn.cpcnn.policy import RULES, WEIGHTINGS, activate, check_tau, confusion_matrix, merge
from dynacnn.errors import ConfigError

SETTINGS = settings(max_examples=60, deadline=None)


@st.composite
def policy_inputs(draw):
    """Clustifier probabilities v (B, G), a confusion matrix (G, G) with a dominant diagonal, and a threshold."""
    groups = draw(st.integers(1, 6))
    batch = draw(st.integers(1, 8))
    seed = draw(st.integers(0, 2**31 - 1))
    generator = torch.Generator().manual_seed(seed)
    scale = draw(st.sampled_from([0.5, 3.0, 10.0]))
    v = torch.softmax(scale * torch.randn(batch, groups, generator=generator, dtype=torch.float64), dim=1)
    confusion = torch.randint(0, 20, (groups, groups), generator=generator).double() + 200 * torch.eye(
        groups, dtype=torch.float64
    )
    tau = draw(st.floats(0.01, 1.0))
    return v, confusion, tau


@SETTINGS
@given(policy_inputs(), st.sampled_from(RULES), st.sampled_from(WEIGHTINGS))
def test_argmax_active_and_weights_sum_to_one(inputs, rule, weighting):
    v, confusion, tau = inputs
    active, weights = activate(v, confusion, tau, rule, weighting)
    assert active.dtype == torch.bool and active.shape == v.shape == weights.shape
    assert active[torch.arange(len(v)), v.argmax(1)].all()
    assert torch.allclose(weights.sum(1), torch.ones(len(v), dtype=v.dtype))
    assert (weights[~active] == 0).all()
    assert (weights >= 0).all()


@SETTINGS
@given(policy_inputs(), st.floats(0.01, 1.0), st.sampled_from(RULES))
def test_set_only_grows_with_tau(inputs, other, rule):
    v, confusion, tau = inputs
    low, high = sorted((tau, other))
    small, _ = activate(v, confusion, low, rule)
    large, _ = activate(v, confusion, high, rule)
    assert (large | ~small).all()


@SETTINGS
@given(policy_inputs(), st.sampled_from(RULES), st.sampled_from(WEIGHTINGS))
def test_tau_one_activates_everything(inputs, rule, weighting):
    v, confusion, _ = inputs
    active, _ = activate(v, confusion, 1.0, rule, weighting)
    assert active.all()


@SETTINGS
@given(policy_inputs(), st.sampled_from(RULES))
def test_minimum_set_eq1(inputs, rule):
    """Eq. 1: the set's v exceeds tau (unless it is everything), and dropping the last one added would not."""
    v, confusion, tau = inputs
    active, _ = activate(v, confusion, tau, rule)
    for row, column, mask in zip(v, confusion.t()[v.argmax(1)], active):
        total = row[mask].sum().item()
        if not mask.all():
            assert total > tau
        if mask.sum() > 1:
            assert total - row[last_added(row, column, mask, rule)].item() <= tau + 1e-12


def last_added(v: torch.Tensor, column: torch.Tensor, mask: torch.Tensor, rule: str) -> int:
    """Alg. 1 written out for one image: the active hyper-class that joined the set last (never the argmax).

    "top" adds by decreasing v; "confusion" adds by decreasing confusion[:, argmax], ties by decreasing v.
    """
    predicted = int(v.argmax())
    extras = [g for g in range(len(v)) if mask[g] and g != predicted]
    if rule == "top":
        return min(extras, key=lambda g: v[g].item())
    return min(extras, key=lambda g: (column[g].item(), v[g].item()))


@SETTINGS
@given(policy_inputs())
def test_top_rule_takes_largest_v(inputs):
    v, confusion, tau = inputs
    active, _ = activate(v, confusion, tau, "top")
    for row, mask in zip(v, active):
        if (~mask).any():
            assert row[mask].min() >= row[~mask].max()


@SETTINGS
@given(policy_inputs())
def test_confusion_rule_adds_most_confused_first(inputs):
    """Alg. 1: after the argmax, members are the hyper-classes with the largest confusion[:, argmax]."""
    v, confusion, tau = inputs
    active, _ = activate(v, confusion, tau, "confusion")
    for row, mask in zip(v, active):
        predicted = int(row.argmax())
        column = confusion[:, predicted].clone()
        others = torch.ones_like(mask)
        others[predicted] = False
        chosen, rest = mask & others, ~mask & others
        if chosen.any() and rest.any():
            assert column[chosen].min() >= column[rest].max()


@SETTINGS
@given(policy_inputs())
def test_weightings_follow_their_definition(inputs):
    v, confusion, tau = inputs
    active, eq3 = activate(v, confusion, tau, "confusion", "eq3")
    _, own = activate(v, confusion, tau, "confusion", "clustifier")
    column = confusion[:, v.argmax(1)].t() * active
    assert torch.allclose(eq3, column / column.sum(1, keepdim=True))
    assert torch.allclose(own, v * active / (v * active).sum(1, keepdim=True))


@SETTINGS
@given(policy_inputs(), st.sampled_from(RULES), st.sampled_from(WEIGHTINGS))
def test_batched_equals_row_by_row(inputs, rule, weighting):
    v, confusion, tau = inputs
    active, weights = activate(v, confusion, tau, rule, weighting)
    for b in range(len(v)):
        row_active, row_weights = activate(v[b : b + 1], confusion, tau, rule, weighting)
        assert torch.equal(row_active[0], active[b])
        assert torch.allclose(row_weights[0], weights[b])


def test_worked_example():
    """v = (0.5, 0.3, 0.2): tau 0.4 -> argmax only; 0.7 -> top two; the confusion rule follows the column."""
    v = torch.tensor([[0.5, 0.3, 0.2]])
    confusion = torch.tensor([[90.0, 1, 1], [2, 90, 1], [8, 1, 90]])
    assert activate(v, confusion, 0.4, "top")[0].tolist() == [[True, False, False]]
    assert activate(v, confusion, 0.7, "top")[0].tolist() == [[True, True, False]]
    assert activate(v, confusion, 0.65, "confusion")[0].tolist() == [[True, False, True]]
    assert activate(v, confusion, 0.75, "confusion")[0].tolist() == [[True, True, True]]
    _, weights = activate(v, confusion, 0.65, "confusion", "eq3")
    assert weights[0].tolist() == pytest.approx([90 / 98, 0, 8 / 98])


def test_eq3_pathology_argmax_head_keeps_the_weight():
    """With a dominant diagonal, Eq. 3 gives the extra heads almost no weight: they cannot change the argmax."""
    confusion = torch.tensor([[950.0, 40], [50, 960]])
    v = torch.tensor([[0.55, 0.45]])
    head_probs = [torch.tensor([[0.6, 0.4]]), torch.tensor([[0.99, 0.01]])]
    members = [torch.tensor([0, 1]), torch.tensor([2, 3])]
    _, eq3 = activate(v, confusion, 1.0, "top", "eq3")
    _, own = activate(v, confusion, 1.0, "top", "clustifier")
    assert eq3[0, 0] >= 0.94
    assert merge(eq3, head_probs, members, 4).argmax().item() == 0
    assert merge(own, head_probs, members, 4).argmax().item() == 2


@pytest.mark.parametrize("tau", [0.0, -0.1, 1.0001, 2, math.nan, True, "0.5"])
def test_tau_outside_unit_interval_is_refused(tau):
    with pytest.raises(ConfigError, match="tau"):
        activate(torch.full((1, 2), 0.5), torch.eye(2), tau)
    with pytest.raises(ConfigError):
        check_tau(tau)


def test_bad_inputs_are_refused():
    v = torch.full((2, 3), 1 / 3)
    with pytest.raises(ConfigError, match="rule"):
        activate(v, torch.eye(3), 0.5, rule="greedy")
    with pytest.raises(ConfigError, match="weighting"):
        activate(v, torch.eye(3), 0.5, weighting="mean")
    with pytest.raises(ConfigError, match="confusion"):
        activate(v, torch.eye(2), 0.5, "confusion")
    with pytest.raises(ConfigError, match="confusion"):
        activate(v, None, 0.5, "top", "eq3")
    with pytest.raises(ConfigError, match="confusion"):
        activate(v, -torch.eye(3), 0.5, "confusion")
    with pytest.raises(ConfigError, match="v must"):
        activate(torch.ones(3), torch.eye(3), 0.5)
    assert activate(v, None, 0.5, "top", "clustifier")[0].shape == (2, 3)


def test_confusion_matrix_counts_rows_true_columns_predicted():
    true = torch.tensor([0, 0, 1, 2, 2, 2])
    predicted = torch.tensor([0, 1, 1, 2, 0, 2])
    assert confusion_matrix(true, predicted, 3).tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
