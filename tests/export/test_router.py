"""The runtime's numpy policies equal the PyTorch ones element for element, ties included (property tests)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dynacnn.cpcnn.policy import activate as torch_activate
from dynacnn.mscnn.cap_conv import majority_filters as torch_majority
from dynacnn.mscnn.policies import Policy
from dynacnn.runtime.exits import ExitPolicy, filter_ranks, kept_filters, majority_filters
from dynacnn.runtime.router import activate, activate_one

# A few distinct values, so that ties in v, confidences and cumulative sums come up often.
LEVELS = st.sampled_from([0.0, 0.05, 0.1, 0.2, 0.25, 0.3, 0.5, 1.0, 2.0, 3.0])


def probabilities(rows: list[list[float]]) -> torch.Tensor:
    raw = torch.tensor(rows, dtype=torch.float32) + 1e-3
    return raw / raw.sum(1, keepdim=True)


@settings(max_examples=150, deadline=None)
@given(
    rows=st.integers(1, 4).flatmap(
        lambda g: st.lists(st.lists(LEVELS, min_size=g, max_size=g), min_size=1, max_size=6)
    ),
    tau=st.sampled_from([0.1, 0.25, 0.5, 0.6, 0.75, 0.9, 0.999, 1.0]),
    rule=st.sampled_from(["top", "confusion"]),
    weighting=st.sampled_from(["eq3", "clustifier"]),
    seed=st.integers(0, 1000),
)
def test_activation_sets_and_weights(rows, tau, rule, weighting, seed):
    v = probabilities(rows)
    groups = v.shape[1]
    confusion = torch.randint(0, 4, (groups, groups), generator=torch.Generator().manual_seed(seed)).double()
    active, weights = torch_activate(v, confusion, tau, rule, weighting)
    got_active, got_weights = activate(v.numpy(), confusion.numpy(), tau, rule, weighting)
    assert (got_active == active.numpy()).all()
    np.testing.assert_allclose(got_weights, weights.numpy(), rtol=0, atol=1e-6)


@settings(max_examples=300, deadline=None)
@given(
    row=st.integers(1, 6).flatmap(lambda g: st.lists(LEVELS, min_size=g, max_size=g)),
    tau=st.sampled_from([0.1, 0.25, 0.5, 0.6, 0.75, 0.9, 0.999, 1.0]),
    rule=st.sampled_from(["top", "confusion"]),
    weighting=st.sampled_from(["eq3", "clustifier"]),
    seed=st.integers(0, 1000),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_one_image_in_plain_python_equals_the_vectorised_policy(row, tau, rule, weighting, seed, dtype):
    v = probabilities([row]).numpy().astype(dtype)
    groups = v.shape[1]
    confusion = np.random.default_rng(seed).integers(0, 4, (groups, groups)).astype(np.float64)
    active, weights = activate(v, confusion, tau, rule, weighting)
    got_active, got_weights = activate_one(v, confusion, tau, rule, weighting)
    assert got_active.shape == active.shape and (got_active == active).all()
    assert got_weights.dtype == weights.dtype
    np.testing.assert_allclose(got_weights, weights, rtol=2 * np.finfo(dtype).eps, atol=0)


@pytest.mark.parametrize("policy", [activate, activate_one])
def test_tau_is_compared_in_float32_as_pytorch_does(policy):
    # the second hyper-class's preceding sum is float32(0.1), above the float64 0.1 but not above float32(0.1)
    v = np.array([[0.1, 0.1]], dtype=np.float32)
    active, _ = policy(v, np.eye(2), 0.1, "top", "clustifier")
    expected, _ = torch_activate(torch.from_numpy(v), None, 0.1, "top", "clustifier")
    assert active.tolist() == expected.tolist() == [[True, True]]


def test_one_image_with_nan_probabilities_is_left_to_the_vectorised_policy():
    v = np.array([[np.nan, 0.5, 0.5]], dtype=np.float32)
    confusion = np.eye(3)
    for rule in ("top", "confusion"):
        active, weights = activate(v, confusion, 0.5, rule, "eq3")
        got_active, got_weights = activate_one(v, confusion, 0.5, rule, "eq3")
        assert (got_active == active).all()
        np.testing.assert_array_equal(got_weights, weights)


@settings(max_examples=150, deadline=None)
@given(
    rows=st.lists(st.lists(LEVELS, min_size=6, max_size=6), min_size=1, max_size=6),
    mask_bits=st.lists(st.booleans(), min_size=6, max_size=6),
    kind=st.sampled_from(["TP", "CAP_FC", "PTHP"]),
    d_ct=st.sampled_from([0.3, 0.5, 0.8, 0.95]),
    p_th=st.integers(1, 6),
    s_th=st.sampled_from([0.2, 0.5, 0.8, 0.99]),
    top_c=st.integers(1, 3),
)
def test_exit_policy_steps(rows, mask_bits, kind, d_ct, p_th, s_th, top_c):
    logits = torch.tensor(rows, dtype=torch.float32)
    mask = torch.tensor(mask_bits).expand(len(rows), 6).clone()
    mask[:, 0] = True
    settings_ = {
        "TP": {"d_ct": (d_ct,)},
        "CAP_FC": {"p_th": (p_th,)},
        "PTHP": {"d_ct": (d_ct,), "s_th": (s_th,), "stop_size": top_c},
    }[kind]
    policy = Policy(kind, 2, 6, top_c=top_c, **settings_)
    spec = {"kind": kind, "top_c": top_c} | {
        key: list(value) if isinstance(value, tuple) else value for key, value in settings_.items()
    }
    mine = ExitPolicy.from_spec(spec, 2, 6)
    for stage in (0, 1):
        probs, leave, next_mask = policy.step(stage, logits, mask)
        got_probs, got_leave, got_mask = mine.step(stage, logits.numpy(), mask.numpy())
        np.testing.assert_allclose(got_probs, probs.numpy(), rtol=0, atol=1e-6)
        assert (got_leave == leave.numpy()).all() and (got_mask == next_mask.numpy()).all()


@settings(max_examples=100, deadline=None)
@given(images=st.integers(1, 5), p_th=st.integers(1, 5), rm=st.integers(0, 6), seed=st.integers(0, 1000))
def test_cap_conv_votes(images, p_th, rm, seed):
    # Distinct probabilities: torch.topk leaves the order of tied values unspecified (softmax outputs do not tie).
    generator = torch.Generator().manual_seed(seed)
    probs = torch.randn(images, 5, generator=generator).softmax(1)
    order = torch.stack([torch.randperm(7, generator=generator) for _ in range(5)])
    order[1] = order[0]  # two classes that rank alike: tied votes
    expected = torch_majority(probs, order, p_th, rm)
    got = majority_filters(probs.numpy(), filter_ranks(order.numpy()), p_th, rm)
    assert (got == expected.numpy()).all()
    kept = kept_filters(got, 7)
    assert kept.shape == (images, 7 - rm)
    assert all(sorted(set(k) | set(r)) == list(range(7)) for k, r in zip(kept.tolist(), got.tolist()))
