"""Prediction rank and P(MC | P_th = L) (§IV, Eq. 1-3)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dynacnn.errors import ConfigError
from dynacnn.mscnn.rank import misclassification_probability, pick_pruning_thresholds, prediction_rank, rank_statistics

CLASSES = 5


def test_rank_of_a_known_example() -> None:
    logits = torch.tensor([[[0.1, 0.9, 0.5], [3.0, 1.0, 2.0]]])
    assert prediction_rank(logits, torch.tensor([2, 0])).tolist() == [[2, 1]]


def test_rank_statistics_per_class() -> None:
    ranks = torch.tensor([[1, 3, 2, 2]])
    mean, std = rank_statistics(ranks, torch.tensor([0, 0, 1, 1]), 2)
    assert mean.tolist() == [[2.0, 2.0]] and std.tolist() == [[1.0, 0.0]]


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**16), st.integers(5, 60))
def test_misclassification_probability(seed: int, batch: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, batch, CLASSES, generator=generator)
    labels = torch.randint(0, CLASSES, (batch,), generator=generator)
    ranks = prediction_rank(logits, labels)
    p_mc = misclassification_probability(ranks, labels, CLASSES)
    assert p_mc.shape == (3, CLASSES)
    assert (p_mc[:, 1:] <= p_mc[:, :-1] + 1e-12).all() and (p_mc[:, -1] == 0).all()
    top1_error = 1 - (logits.argmax(2) == labels).double().mean(1)
    torch.testing.assert_close(p_mc[:, 0], top1_error)
    picked = pick_pruning_thresholds(p_mc, 0.1)
    for stage, limit in enumerate(picked):
        assert p_mc[stage, limit - 1] <= 0.1 and (limit == 1 or p_mc[stage, limit - 2] > 0.1)


def test_uniform_prior_weights_classes_equally() -> None:
    ranks = torch.tensor([[2, 1, 1, 1]])
    labels = torch.tensor([0, 1, 1, 1])
    uniform = misclassification_probability(ranks, labels, 2, prior=torch.tensor([0.5, 0.5]))
    assert uniform[0, 0].item() == pytest.approx(0.5)
    assert misclassification_probability(ranks, labels, 2)[0, 0].item() == pytest.approx(0.25)


@pytest.mark.parametrize("target", [-0.1, 1.5])
def test_bad_target(target: float) -> None:
    with pytest.raises(ConfigError, match="target"):
        pick_pruning_thresholds(torch.zeros(2, 3), target)
